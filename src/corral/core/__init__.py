"""Pure rules of corral: the vocabulary, the state machines and the decisions.

Owns ids, records, the process and node lifecycles, constraint checks, the matchmaker,
the restart policy and heartbeat health. Everything here is a pure function of its
arguments: stdlib only, no asyncio, no I/O, no clock reads (``now`` is a parameter),
so it can be property-tested and benchmarked at scale. Must not import any other corral
package.
"""
