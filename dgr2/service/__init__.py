"""The online re-ranking service: HTTP in front of :class:`model.engine.Reranker`.

The service owns admission, batching, A/B routing, metrics and error shapes; it never touches
tokens or weights itself (that is ``model``) nor the checkpoint format (that is ``model_store``).
Start it with ``dgr2 serve`` or build the ASGI app with :func:`service.app.create_app`.
"""
