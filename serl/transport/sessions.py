"""The learner's per-actor-session dedup table: which batch seq each session has reached; no I/O, no clock."""

from __future__ import annotations

import dataclasses
import enum

SessionKey = tuple[str, str]  # (actor id, session id)


class BatchVerdict(enum.Enum):
    """What to do with an incoming batch, given its seq and the session's acked seq."""

    ACCEPT = "ok"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"


@dataclasses.dataclass
class ActorSession:
    """Progress of one actor session."""

    acked: int = -1  # highest contiguous batch seq received
    delivered: int = -1  # highest seq handed to the consumer; what state_dict() persists
    queued: int = 0  # batches received but not yet handed to the consumer
    handshaken: bool = False
    last_seen: float = 0.0
    tick: int = 0  # activity order, for pruning old sessions

    def verdict(self, seq: int) -> BatchVerdict:
        """Only the next seq is accepted, so each batch is taken at most once and in order."""
        if seq <= self.acked:
            return BatchVerdict.DUPLICATE
        if seq != self.acked + 1:
            return BatchVerdict.OUT_OF_ORDER
        return BatchVerdict.ACCEPT


class SessionTable:
    """Per (actor id, session id): batches received and delivered, for exactly-once delivery across restarts.

    Keeps at most ``max_sessions_per_actor`` sessions per actor and ``max_sessions`` in all (the least recently
    active go first, unless they still have queued batches), so that neither memory nor the checkpointed
    ``state_dict()`` grows with the number of actor ids ever seen. Callers pass the time in and serialise access
    (not thread-safe).
    """

    def __init__(self, max_sessions_per_actor: int, max_sessions: int = 2048):
        self.max_sessions_per_actor = max_sessions_per_actor
        self.max_sessions = max_sessions
        self._sessions: dict[SessionKey, ActorSession] = {}  # least recently active first
        self._by_actor: dict[str, dict[str, None]] = {}  # per actor id, its session ids in the same order
        self._tick = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def handshake(self, key: SessionKey, first_seq: int, now: float) -> tuple[ActorSession, int]:
        """Register a hello whose actor still holds batches from ``first_seq`` on.

        Returns the session and how many batches the actor no longer holds that the learner never got
        (dropped beyond the actor's retention; the session skips past them).
        """
        session = self._touch(key, now)
        session.handshaken = True
        lost = max(0, first_seq - 1 - session.acked)
        if lost:
            session.acked = first_seq - 1
            if session.queued == 0:
                session.delivered = session.acked
        self._prune(key[0])
        self._cap(keep=key)
        return session, lost

    def handshaken(self, key: SessionKey, now: float) -> ActorSession | None:
        """The session, marked as seen, if it said hello; None otherwise."""
        session = self._sessions.get(key)
        if session is None or not session.handshaken:
            return None
        return self._touch(key, now)

    def queued(self, session: ActorSession, seq: int) -> None:
        """Batch ``seq`` was accepted and waits in the consumer's queue."""
        session.acked = seq
        session.queued += 1

    def delivered(self, session: ActorSession, seq: int) -> None:
        """Batch ``seq`` was accepted and handed to the consumer at once."""
        session.acked = session.delivered = seq

    def drained(self, key: SessionKey, seq: int) -> None:
        """The consumer took queued batch ``seq``."""
        session = self._sessions.get(key)
        if session is not None:
            session.queued -= 1
            session.delivered = max(session.delivered, seq)

    def live_holder(self, key: SessionKey, now: float, timeout_s: float) -> tuple[str, float] | None:
        """The most recently heard other session of ``key``'s actor id, if heard within ``timeout_s``: (its session
        id, seconds since heard); None when the id is free. Sessions restored by ``load_state_dict`` have not said
        hello and are never live."""
        actor_id, session_id = key
        for other in reversed(self._by_actor.get(actor_id, {})):
            session = self._sessions[(actor_id, other)]
            age = now - session.last_seen
            if other != session_id and session.handshaken and age < timeout_s:
                return other, age
        return None

    def alive(self, now: float, timeout_s: float) -> dict[str, dict]:
        """Per actor id: newest handshaken session, its acked seq, seconds since last heard, and whether alive."""
        out: dict[str, dict] = {}
        for (actor_id, session_id), s in self._by_activity():
            if s.handshaken:
                age = now - s.last_seen
                out[actor_id] = {
                    "session": session_id, "acked": s.acked, "seconds_since_seen": age, "alive": age < timeout_s,
                }
        return out

    def state_dict(self) -> dict:
        """Per session, the last batch seq handed to the consumer, oldest activity first; JSON-able."""
        sessions = [[actor_id, session, s.delivered] for (actor_id, session), s in self._by_activity()]
        return {"format": 1, "sessions": sessions}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` output; raises ValueError (and changes nothing) if it is malformed."""
        if not isinstance(state, dict) or state.get("format") != 1 or not isinstance(state.get("sessions"), list):
            raise ValueError("transport state must be a dict with format 1 and a 'sessions' list")
        restored: dict[SessionKey, ActorSession] = {}
        for i, entry in enumerate(state["sessions"]):
            if (
                not isinstance(entry, (list, tuple))
                or len(entry) != 3
                or not all(isinstance(x, str) for x in entry[:2])
                or isinstance(entry[2], bool)
                or not isinstance(entry[2], int)
            ):
                raise ValueError(f"transport state sessions[{i}] must be [actor_id, session, seq], got {entry!r}")
            restored.pop((entry[0], entry[1]), None)  # a repeated key counts at its last position
            restored[(entry[0], entry[1])] = ActorSession(acked=entry[2], delivered=entry[2], tick=i)
        self._sessions = restored
        self._by_actor = {}
        for actor_id, session_id in restored:
            self._by_actor.setdefault(actor_id, {})[session_id] = None
        self._tick = len(state["sessions"])

    def _touch(self, key: SessionKey, now: float) -> ActorSession:
        # re-insert at the end: dicts keep insertion order, so both stay sorted by activity at O(1) a touch
        session = self._sessions.pop(key, None) or ActorSession()
        self._sessions[key] = session
        mine = self._by_actor.setdefault(key[0], {})
        mine.pop(key[1], None)
        mine[key[1]] = None
        self._tick += 1
        session.tick = self._tick
        session.last_seen = now
        return session

    def _by_activity(self) -> list[tuple[SessionKey, ActorSession]]:
        return list(self._sessions.items())

    def _delete(self, key: SessionKey) -> None:
        del self._sessions[key]
        mine = self._by_actor[key[0]]
        del mine[key[1]]
        if not mine:
            del self._by_actor[key[0]]

    def _prune(self, actor_id: str) -> None:
        mine = list(self._by_actor.get(actor_id, ()))
        for session_id in mine[: max(0, len(mine) - self.max_sessions_per_actor)]:
            if self._sessions[(actor_id, session_id)].queued == 0:
                self._delete((actor_id, session_id))

    def _cap(self, keep: SessionKey) -> None:
        """Evict the least recently active sessions with nothing queued until at most ``max_sessions`` remain."""
        excess = len(self._sessions) - self.max_sessions
        victims: list[SessionKey] = []
        for key, session in self._sessions.items():
            if len(victims) >= excess:
                break
            if session.queued == 0 and key != keep:
                victims.append(key)
        for key in victims:
            self._delete(key)
