"""Where a sweep's evaluations live: one Optuna trial per evaluation (a setting at a seed).

An evaluation is identified by its *key* (the setting's options and the seed). Any number of
workers, in one process, on one machine or on many sharing a PostgreSQL study, claim evaluations by
key: a worker creates a trial, tags it with the key, and owns the evaluation only if its trial is the
lowest-numbered running or complete one with that key. Every worker checks after tagging its own
trial, so of two racing workers exactly one wins, on any storage Optuna supports. A finished key is
never run again, which is what makes a rerun of the same command continue the study.

A trial left ``RUNNING`` by a worker that was killed is failed when a worker on the same host starts
and finds its process gone (``worker`` attribute ``host:pid``); its evaluation is then claimed anew.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from utils import UserError

log = logging.getLogger("wpl")
POLL_S = 1.0
KEYLESS_WAIT_S = 30.0  # how long a trial asked by another worker may take to show its key


def setting_key(setting: dict[str, str], seed: int | None) -> str:
    """A stable text key for a setting at a seed (``None``: a program that runs every seed itself)."""
    return json.dumps({"setting": dict(sorted(setting.items())), "seed": seed}, sort_keys=True)


def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_storage(optuna: Any, url: str) -> Any:
    """An RDB storage for a database URL (SQLite waits for a locked file instead of failing), or a
    journal file for ``journal:<path>`` (shared file systems without a database server)."""
    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class Study:
    """An Optuna study holding a sweep's evaluations, with claiming by key."""

    def __init__(self, storage: str, name: str, minimize: bool) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        for attempt in range(5):  # workers starting together race to create the database's tables
            try:
                self.storage = make_storage(optuna, storage)
                self.study = optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True,
                                                 direction="minimize" if minimize else "maximize")
                break
            except (ImportError, ModuleNotFoundError) as err:
                raise UserError(f"--storage={storage}: its database driver is not installed ({err})") from err
            except Exception as err:  # SQLAlchemy raises many types for unreachable or malformed URLs
                if attempt == 4:
                    raise UserError(f"--storage={storage}: cannot open the study ({type(err).__name__}: "
                                    f"{' '.join(str(err).split())[:160]})") from err
                time.sleep(0.5 + attempt)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _trials(self, states: tuple[Any, ...] | None = None) -> list[Any]:
        return self.study.get_trials(deepcopy=False, states=states)

    def fail_dead_workers(self) -> int:
        """Fail the running trials whose worker process on this host is gone (killed sweeps)."""
        host = socket.gethostname()
        failed = 0
        for trial in self._trials((self.optuna.trial.TrialState.RUNNING,)):
            worker = str(trial.user_attrs.get("worker", ""))
            name, _, pid = worker.rpartition(":")
            if name == host and pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                self.storage.set_trial_state_values(trial._trial_id, self.optuna.trial.TrialState.FAIL)
                failed += 1
        if failed:
            log.info("sweep: %d evaluation(s) left running by a killed worker will be redone", failed)
        return failed

    def values(self) -> dict[str, Any]:
        """``key -> result`` of every completed evaluation (the result as stored: a number or a list)."""
        return {t.user_attrs["key"]: t.user_attrs["result"] for t in self._trials((self.optuna.trial.TrialState.COMPLETE,))
                if "key" in t.user_attrs and "result" in t.user_attrs}

    def claim(self, key: str, setting: dict[str, str], seed: int | None) -> Any | None:
        """A trial owned by this worker for ``key``, or ``None`` when another worker owns or finished it."""
        state = self.optuna.trial.TrialState
        trial = self.study.ask()
        for name, value in (("key", key), ("setting", setting), ("seed", seed), ("worker", self.worker)):
            trial.set_user_attr(name, value)
        owners = self._owners(key, trial.number)
        if min(owners) != trial.number:
            trial.set_user_attr("duplicate_of", min(owners))
            self.study.tell(trial, state=state.PRUNED)
            return None
        return trial

    def _owners(self, key: str, mine: int) -> list[int]:
        """Numbers of the running or finished trials of ``key`` (``mine`` among them).

        The lowest number owns the key, so that must be decided once every lower-numbered trial shows
        its key: another worker's trial asked a moment before this one may not have it yet (its
        ``ask`` and ``set_user_attr`` are two transactions), and deciding without it would let both
        workers claim the evaluation. A trial that stays keyless for ``KEYLESS_WAIT_S`` (its worker
        died in between) is ignored.
        """
        state = self.optuna.trial.TrialState
        deadline = time.time() + KEYLESS_WAIT_S
        while True:
            trials = self._trials((state.RUNNING, state.COMPLETE))
            pending = [t for t in trials if t.number < mine and t.state == state.RUNNING and "key" not in t.user_attrs]
            if not pending or time.time() > deadline:
                return [t.number for t in trials if t.user_attrs.get("key") == key]
            time.sleep(POLL_S / 20)

    def extras(self) -> dict[str, dict[str, Any]]:
        """``key -> {measure: result}`` of the extra measures recorded with completed evaluations."""
        return {t.user_attrs["key"]: t.user_attrs.get("extras", {})
                for t in self._trials((self.optuna.trial.TrialState.COMPLETE,)) if "key" in t.user_attrs}

    def finish(self, trial: Any, result: float | list[float] | None, error: str = "",
               extras: dict[str, Any] | None = None) -> None:
        """Record an evaluation's result (its mean is the trial's value), or its failure."""
        state = self.optuna.trial.TrialState
        if result is None:
            trial.set_user_attr("error", error[-500:])
            self.study.tell(trial, state=state.FAIL)
            return
        trial.set_user_attr("result", result)
        if extras:
            trial.set_user_attr("extras", extras)
        values = result if isinstance(result, list) else [result]
        self.study.tell(trial, sum(values) / len(values))

    def wait_for(self, key: str, timeout_s: float) -> Any | None:
        """The result of ``key`` once its owner finishes it (``None`` if it failed or ``timeout_s`` passed)."""
        state = self.optuna.trial.TrialState
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            mine = [t for t in self._trials() if t.user_attrs.get("key") == key and t.state != state.PRUNED]
            if any(t.state == state.COMPLETE for t in mine):
                return next(t.user_attrs["result"] for t in mine if t.state == state.COMPLETE)
            if not any(t.state == state.RUNNING for t in mine):
                return None
            time.sleep(POLL_S)
        return None
