"""What one GraphQL operation may cost, in a module of its own: the gateway's OpenAPI document
states these bounds without importing strawberry and graphql-core (~8 MiB resident), which load
with the first /graphql request (gateway/app.py)."""

from __future__ import annotations

# Parsing costs about 0.15 ms and 3 KB a token (a 5,000-alias document: 0.8 s, 14 MB): the
# document is refused as soon as it passes this many. A hand-written query is tens of tokens;
# an IDE's introspection query some 300.
MAX_QUERY_TOKENS = 2000
MAX_DEPTH = 8  # the schema's own paths are at most 3 deep (branch > history > author)
MAX_ALIASES = 20
# About the most one answer carries: a GraphQL operation's field names and text as they
# resolve, and /api/story/pages's page text (gateway/routes/story.py).
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
