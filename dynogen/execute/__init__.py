"""Execution: request bodies in, answers out, within limits and a budget.

Everything that reaches the model lives here, so no other stage needs to know
how an answer was obtained (online, from the cache, or from a Batch API job),
nor from which provider: OpenAI-compatible servers (``client``, ``batch_remote``)
or Anthropic (``anthropic_client``, ``anthropic_batches``, translating at the
wire in ``anthropic_wire``), behind the same executors.
"""
