"""Prompts: what is asked of the model. Metadata rendered into messages, the response schema, the
server's dialect, and token counts.
"""
