"""The core: prompts, reading a request body, building the forwarded one, errors.

Pure functions over bytes and dicts: no ASGI, no network, no event loop.
"""
