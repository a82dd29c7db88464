"""Episode files: one HDF5 file per recording session, one group per episode.

Layout (T = number of steps of the episode)::

    file attrs      schema_version=1, config (JSON string), created (ISO time)
    episode_000000/
        observations/state/<name>     (T+1, d) float32   proprio entries, final obs included
        observations/images/<camera>  (T+1, H, W, 3) uint8, one chunk per frame, lzf by default
        observations/state/<arm>/<name>, observations/images/<arm>/<camera>
                                      two arms: one group per arm (``left``, ``right``), read back as
                                      ``<arm>/<name>``; files of one arm are unchanged
        actions                       (T, A) float32     the executed action (the human's when intervened)
        rewards                       (T,) float32
        terminated, truncated         (T,) bool
        intervened, succeed           (T,) bool
        gripper_changed               (T,) bool          optional: the step changed the gripper (open<->close)
        timestamps                    (T+1,) float64
        attrs: length=T, success, task, source, complete=True (set last)

Crash safety: the writer opens the file, writes one whole episode, sets ``complete`` and closes
it again, so between episodes nothing is open; Ctrl-C/SIGTERM arriving during a write are
deferred until the episode is on disk, and an undo journal (:mod:`.journal`) lets the next writer
roll back an append that a SIGKILL or power loss cut short. Readers never modify the file: they
read the state before such an append. A group without ``complete=True`` is skipped by
:func:`read_episodes` with a warning.

Modules: :mod:`.schema` (Episode, dtypes, validation), :mod:`.journal`, :mod:`.writer`,
:mod:`.recorder`, :mod:`.reader`.
"""

from serl.data.episodes.journal import journal_path, recover
from serl.data.episodes.reader import episode_count, read_config, read_episodes
from serl.data.episodes.recorder import EpisodeRecorder
from serl.data.episodes.schema import GROUP_PATTERN, OPTIONAL_STEP_FIELDS, SCHEMA_VERSION, STEP_FIELDS, Episode
from serl.data.episodes.writer import EpisodeWriter

__all__ = [
    "GROUP_PATTERN",
    "OPTIONAL_STEP_FIELDS",
    "SCHEMA_VERSION",
    "STEP_FIELDS",
    "Episode",
    "EpisodeRecorder",
    "EpisodeWriter",
    "episode_count",
    "journal_path",
    "read_config",
    "read_episodes",
    "recover",
]
