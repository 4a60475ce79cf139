"""The dispatcher's side of agent connections.

Accepts the connections agents dial, authenticates each before anything else is read,
and hands the messages of authenticated agents to a handler. Imports ``core`` and
``wire`` only; it decides nothing about processes.
"""

from corral.hub.hub import AgentHandler, AgentSession, Hub

__all__ = ["AgentHandler", "AgentSession", "Hub"]
