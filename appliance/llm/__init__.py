"""The host's LLM side: the gateway each claw reaches on its forwarded port
7702, its configuration, policy and usage store, and a scripted
OpenAI-compatible model server for tests and demos (``python -m appliance.llm``).
"""
