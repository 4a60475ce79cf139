"""The dispatcher: applies the core's decisions to the store and the world.

Owns the live tables (``state``), the EPU operations (``service``), the level-triggered
loops (``mapper``, ``syncer``, the node tick in ``nodes``), event delivery (``events``)
and the wiring of it all (``runtime``). Imports ``core``, ``store``, ``pool``, ``hub``,
``drivers`` and ``wire`` messages; never ``api``, ``client`` or ``cli``.
"""
