"""The task stage: units streamed through prompts, the executor and the task filter, committed in
order; and ``--max-tokens auto``.
"""
