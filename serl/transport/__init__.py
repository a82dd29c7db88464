"""Actor–learner transport over ZeroMQ with msgpack messages (no pickle).

Learner side::

    server = LearnerServer(LearnerServerConfig(request_port=5588, weights_port=5589, config_hash=h)).start()
    server.load_state_dict(saved)            # dedup table from the last checkpoint, if resuming
    for batch in server.drain(timeout=0.1):  # ReceivedBatch(actor_id, session, seq, transitions)
        buffer.insert_many(batch.transitions)
    server.publish_weights(params, version)  # pytree of arrays, or bytes
    checkpoint["transport"] = server.state_dict()

Actor side::

    client = ActorClient(ActorClientConfig(actor_id="robot-1", config_hash=h, host="10.0.0.2"))
    client.send({"observations": obs, "actions": a, "rewards": r, ...})   # never blocks
    if (w := client.latest_weights()) is not None: version, params = w    # never blocks
    client.close(flush_timeout=5.0)

Protocol (actor DEALER -> learner ROUTER; learner PUB -> actor SUB, conflated):

- ``hello`` (actor id, session id, config hash, schema version, first seq still held) -> ``welcome``
  (highest batch seq the learner holds for that session, its weights version) or ``reject`` (reason). An actor id
  whose other session was heard within the learner's ``actor_timeout_s`` is refused with code ``actor_id_in_use``
  and ``retry_s`` (that timeout): the actor retries for twice that plus a margin, then gives up.
- ``batch`` (session, seq, n_items; one msgpack frame per transition follows) -> ``ack`` (highest contiguous
  seq, status ok / duplicate / out_of_order / busy / refused, with a reason for busy and refused). A consumer
  callback that persists the batch before returning makes the ack durable; one that raises ``BatchRefused``
  skips the batch for good (the actor counts it and moves on). The learner accepts only seq == acked + 1, so a batch is
  delivered at most once and in order; the actor keeps unacked batches and resends them after a timeout, a
  go-back reply or a re-handshake, so it is delivered at least once.
- ``ping`` -> ``pong`` when idle (heartbeat); no reply within ``request_timeout_s`` -> new socket, new hello.
- ``get_weights`` -> the last ``weights`` message, for an actor that joined after the last publish.

Transitions acked by the learner reach it exactly once, across actor and learner restarts (given the
learner restores ``state_dict()``); a mismatched config hash or schema version is refused with a message
that names the difference (``HandshakeRejected``); malformed input raises ``ProtocolError``.
"""

from serl.transport.actor_client import ActorClient, ActorClientConfig, HandshakeRejected, TransportError
from serl.transport.learner_server import BatchRefused, LearnerServer, LearnerServerConfig, ReceivedBatch
from serl.transport.link import ConnectionState, LearnerConnection
from serl.transport.outbox import TransitionOutbox
from serl.transport.schema import SCHEMA_VERSION, ProtocolError, SchemaMismatch, config_hash
from serl.transport.sessions import SessionTable

__all__ = [
    "SCHEMA_VERSION",
    "ActorClient",
    "BatchRefused",
    "ActorClientConfig",
    "ConnectionState",
    "HandshakeRejected",
    "LearnerServer",
    "LearnerConnection",
    "LearnerServerConfig",
    "ProtocolError",
    "ReceivedBatch",
    "SchemaMismatch",
    "SessionTable",
    "TransitionOutbox",
    "TransportError",
    "config_hash",
]
