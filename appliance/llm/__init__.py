"""The host's LLM configuration (``llm.toml``: upstream, key, per-claw
policy) and a scripted OpenAI-compatible model server for tests and demos
(``python -m appliance.llm``). The gateway itself is
``appliance.services.llm_gateway``, its rules ``appliance.core.llm_policy``,
its usage rows ``appliance.store.usage``.
"""
