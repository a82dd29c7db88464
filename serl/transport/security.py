"""CURVE encryption and key-based authentication for the actor–learner sockets (ZeroMQ's own ``zmq.auth``).

``serl keys DIR --actors NAME ...`` (``generate_keys``) lays out one folder per machine::

    DIR/learner/learner.key_secret     the learner's key pair (secret: mode 0600)
    DIR/learner/learner.key            its public half
    DIR/learner/authorized/NAME.key    public keys of the actors the learner accepts
    DIR/NAME/actor.key_secret          actor NAME's key pair (0600)
    DIR/NAME/actor.key
    DIR/NAME/learner.key               the learner's public key, to check that it talks to the right learner

The learner takes ``DIR/learner`` (``LearnerKeys``), each actor its own ``DIR/NAME`` (``ActorKeys``). The learner
refuses to listen beyond loopback without keys unless told ``insecure`` (``check_bind``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("serl.transport")

LEARNER = "learner"
ACTOR = "actor"
AUTHORIZED = "authorized"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOW = "make keys with `serl keys DIR --actors NAME` and pass --net.keys DIR/learner (actors: --net.keys DIR/NAME)"


class InsecureBindError(ValueError):
    """The learner was asked to listen beyond loopback without CURVE keys."""


def is_loopback(host: str) -> bool:
    """True when ``host`` (address or name) reaches this machine only; unknown names and ``*`` are not."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, keys: Path | None, insecure: bool) -> None:
    """Refuse (InsecureBindError) a keyless bind beyond loopback; with ``insecure``, warn and allow it."""
    if keys is not None or is_loopback(host):
        return
    if not insecure:
        raise InsecureBindError(
            f"net.host {host!r} is not loopback and the learner has no CURVE keys, so any peer could send it data "
            f"and read its policy: {_HOW} (or --net.insecure to listen unauthenticated anyway)"
        )
    log.warning(
        "learner transport: listening on %s WITHOUT encryption or authentication (--net.insecure): any peer that "
        "reaches this port can send transitions and read the policy weights", host,
    )


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"CURVE key {path} not found; {_HOW}")
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(f"CURVE key {path} holds no secret key")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("transport: secret key %s is readable by other users; chmod 600 it", path)
    return public, secret


@dataclasses.dataclass(frozen=True)
class LearnerKeys:
    """The learner's key pair and the folder of actor public keys it accepts."""

    public: bytes
    secret: bytes
    authorized: Path

    @classmethod
    def load(cls, directory: Path | str) -> LearnerKeys:
        directory = Path(directory)
        public, secret = _load_pair(directory / f"{LEARNER}.key_secret")
        authorized = directory / AUTHORIZED
        if not authorized.is_dir() or not zmq.auth.load_certificates(authorized):
            raise FileNotFoundError(
                f"no authorised actor keys in {authorized}; add actors with `serl keys {directory.parent} --actors NAME`"
            )
        return cls(public, secret, authorized)

    def secure(self, context: zmq.Context, sockets: list[zmq.Socket]) -> ThreadAuthenticator:
        """Make ``sockets`` CURVE servers (call before binding); returns the running authenticator to stop later."""
        auth = ThreadAuthenticator(context, log=logging.getLogger("serl.transport.auth"))
        auth.start()
        # keys are read once here: authorising a new actor needs a learner restart
        auth.configure_curve(domain="*", location=str(self.authorized))
        for sock in sockets:
            sock.curve_secretkey = self.secret
            sock.curve_publickey = self.public
            sock.curve_server = True
        return auth


@dataclasses.dataclass(frozen=True)
class ActorKeys:
    """An actor's key pair and the learner's public key."""

    public: bytes
    secret: bytes
    learner: bytes

    @classmethod
    def load(cls, directory: Path | str) -> ActorKeys:
        directory = Path(directory)
        public, secret = _load_pair(directory / f"{ACTOR}.key_secret")
        learner_file = directory / f"{LEARNER}.key"
        if not learner_file.is_file():
            raise FileNotFoundError(f"learner public key {learner_file} not found; {_HOW}")
        learner, _ = zmq.auth.load_certificate(learner_file)
        return cls(public, secret, learner)

    def secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the learner (call before connecting)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.learner


def _new_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A key pair ``name.key`` / ``name.key_secret`` made in a private temp folder, secret 0600, moved in."""
    scratch = Path(tempfile.mkdtemp(prefix=".keys-", dir=directory))  # mode 0700: no window with a readable secret
    try:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(scratch, name))
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
        targets = directory / public.name, directory / secret.name
        for src, dst in zip((public, secret), targets):
            os.replace(src, dst)
        return targets
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def generate_keys(directory: Path | str, actors: list[str] | tuple[str, ...]) -> list[Path]:
    """Create (or reuse) the learner's key pair under ``directory`` and a new pair per actor, authorised.

    Existing actor folders are never overwritten (ValueError); returns the files written.
    """
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    directory = Path(directory)
    for name in actors:
        if not _NAME.match(name) or name == LEARNER:
            raise ValueError(f"actor name {name!r}: use letters, digits, '.', '_', '-' (and not {LEARNER!r})")
        if (directory / name).exists():
            raise ValueError(f"{directory / name} exists already; pick another actor name or remove it")
    if len(set(actors)) != len(actors):
        raise ValueError("actor names must differ")
    learner_dir = directory / LEARNER
    authorized = learner_dir / AUTHORIZED
    authorized.mkdir(parents=True, exist_ok=True)
    for d in (learner_dir, authorized):
        os.chmod(d, 0o700)
    written: list[Path] = []
    learner_public = learner_dir / f"{LEARNER}.key"
    if not (learner_dir / f"{LEARNER}.key_secret").is_file():
        written += _new_pair(learner_dir, LEARNER)
    for name in actors:
        actor_dir = directory / name
        actor_dir.mkdir(mode=0o700)
        public, secret = _new_pair(actor_dir, ACTOR)
        shutil.copyfile(public, authorized / f"{name}.key")
        shutil.copyfile(learner_public, actor_dir / f"{LEARNER}.key")
        written += [public, secret, authorized / f"{name}.key", actor_dir / f"{LEARNER}.key"]
    return written
