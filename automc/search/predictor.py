"""F_mo, the AutoMC paper's multi-objective evaluator: predict what appending one strategy to a scheme does.

A 2-layer LSTM reads the vectors of the strategies already in the scheme (after a learned START token); its final
state, the candidate strategy's vector and the task's feature vector go through a small MLP that predicts AR_step,
the relative change of validation accuracy. Only that is predicted: a step's parameter reduction is computed from
the scheme (``compress.base.step_ratio``), not learnt. A strategy's vector is its knowledge-graph embedding
(``automc kb embed``) when known, concatenated with a small hand-made vector (method one-hot, hyperparameter values
scaled to their domain), so F_mo works without embeddings.

Training (``Predictor.fit``) runs until the loss on a held-out share of the records stops improving (patience in
optimiser steps, the best weights kept), with a step cap as a guard, instead of a fixed 10 epochs: on the
benchmark's 300 stored steps the fixed 10 epochs left the loss far from its minimum (``bench/fmo_fit.py``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from automc.catalog import Catalog, Strategy, load_catalog
from automc.search._base import SchemeKey, StepRecord

TARGETS = ("step_ar",)  # what F_mo predicts; PR is computed, not predicted
MIN_HOLDOUT = 10  # fewer records than this: no held-out share, the training loss decides when to stop
MIN_GAIN = 1e-4  # a held-out loss (of standardised AR) lower by less than this, or 0.1%, is no improvement


def strategy_features(strategies: Sequence[Strategy], catalog: Catalog) -> np.ndarray:
    """Hand-made vectors ``(n, f)``: method one-hot, numeric hyperparameters scaled to [0, 1] by their domain,
    string hyperparameters one-hot over their domain, a policy 1 when searched per layer; zero where a method lacks
    the hyperparameter."""
    methods = sorted(catalog.methods)
    columns: dict[tuple[str, Any], int] = {("method", m): i for i, m in enumerate(methods)}
    for name in sorted(catalog.hyperparameters):
        h = catalog.hyperparameters[name]
        for v in (h.domain if h.type == "str" else (None,)):
            columns[(name, v)] = len(columns)
    out = np.zeros((len(strategies), len(columns)), dtype=np.float32)
    for i, s in enumerate(strategies):
        col = columns.get(("method", s.method))
        if col is not None:
            out[i, col] = 1.0
        for name, value in s.settings:
            h = catalog.hyperparameters.get(name)
            if h is None:
                continue
            if h.type == "str":
                col = columns.get((name, value))
                if col is not None:
                    out[i, col] = 1.0
            elif h.type == "policy":  # 1 for an allocation searched per layer, 0 for a rule of the domain
                out[i, columns[(name, None)]] = float(value not in h.domain)
            else:
                lo, hi = (float(x) for x in h.domain)
                out[i, columns[(name, None)]] = (float(value) - lo) / (hi - lo) if hi > lo else 0.0
    return out


class Fmo(nn.Module):
    """LSTM over the parent scheme + MLP over (final state, candidate, task features) -> standardised AR_step."""

    def __init__(self, strategy_dim: int, task_dim: int, *, hidden: int = 32, layers: int = 2,
                 mlp_hidden: int = 64) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.randn(strategy_dim) * 0.1)  # the learned START token
        self.lstm = nn.LSTM(strategy_dim, hidden, num_layers=layers, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden + strategy_dim + task_dim, mlp_hidden), nn.ReLU(),
                                 nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, len(TARGETS)))

    def encode(self, parents: Tensor, lengths: Tensor) -> Tensor:
        """Final top-layer LSTM state ``(n, hidden)`` of each parent (``(n, k, d)`` zero-padded, ``lengths`` real
        steps) with START prepended.

        Sequences are packed (unsorted), so each row's state comes from its own last real step, not padding.
        """
        x = torch.cat([self.start.expand(len(parents), 1, -1), parents], dim=1)  # one op, not one per row
        packed = pack_padded_sequence(x, lengths + 1, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return h[-1]  # restored to the input order by the packed sequence's unsorted_indices

    def forward(self, parents: Tensor, lengths: Tensor, candidates: Tensor, tasks: Tensor) -> Tensor:
        """Padded parents ``(n, k, d)`` with their ``lengths``, candidates ``(n, d)``, standardised tasks
        ``(n, t)`` -> ``(n, 1)``."""
        return self.mlp(torch.cat([self.encode(parents, lengths), candidates, tasks], dim=-1))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (initialisation, shuffling) without disturbing the caller's, on one CPU thread
    (as fast for these tiny matrices, and the same floats whatever the machine's thread count: resume needs it)."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std ignoring NaN; std 1 where a column is constant or unknown."""
    if not len(x) or not x.shape[1]:
        return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    with warnings.catch_warnings():  # an all-NaN column (a feature no task knows) is fine here
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    mean = np.nan_to_num(mean)
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


class Predictor:
    """F_mo with its inputs: strategy vectors for the whole space, task-feature and target scaling, training.

    ``space`` needs ``ids`` (strategy ids, the rows of the vector matrix) and ``strategy(id)``; strategies outside
    it (steps of other tasks with another catalogue) get vectors on first sight. Deterministic for a seed.
    """

    def __init__(self, space: Any, embeddings: Mapping[str, Sequence[float]] | None = None, task_dim: int = 8,
                 seed: int = 0, *, catalog: Catalog | None = None, hidden: int = 32, lr: float = 1e-3,
                 batch_size: int = 256) -> None:
        self.space = space
        self.catalog = catalog or getattr(space, "catalog", None) or load_catalog()
        self.embeddings = dict(embeddings or {})
        self.embedding_dim = len(next(iter(self.embeddings.values()))) if self.embeddings else 0
        self.task_dim = int(task_dim)
        self.seed = int(seed)
        self.lr = lr
        self.batch_size = batch_size
        ids = list(space.ids)
        self._row = {sid: i for i, sid in enumerate(ids)}
        self._matrix = self._vectors([space.strategy(sid) for sid in ids], ids)
        self.strategy_dim = self._matrix.shape[1]
        with _seeded(self.seed):
            self.model = Fmo(self.strategy_dim, self.task_dim, hidden=hidden)
        self.feature_mean = np.zeros(self.task_dim, np.float32)
        self.feature_std = np.ones(self.task_dim, np.float32)
        self.target_mean = np.zeros(len(TARGETS), np.float32)
        self.target_std = np.ones(len(TARGETS), np.float32)
        self.fits = 0
        self.last_fit: dict[str, Any] = {}  # how the latest ``fit`` stopped (steps, losses)
        self.trained_on: Counter[str] = Counter()  # task -> distinct steps trained on
        self._seen: set[tuple] = set()

    # -- inputs ----------------------------------------------------------------------------------------------
    def _vectors(self, strategies: Sequence[Strategy], ids: Sequence[str]) -> np.ndarray:
        hand = strategy_features(strategies, self.catalog)
        if not self.embedding_dim:
            return hand
        emb = np.zeros((len(ids), self.embedding_dim), np.float32)
        for i, sid in enumerate(ids):
            vec = self.embeddings.get(sid)
            if vec is not None and len(vec) == self.embedding_dim:
                emb[i] = np.asarray(vec, np.float32)
        return np.concatenate([emb, hand], axis=1)

    def _index(self, sid: str) -> int | None:
        """Row of ``sid`` in the vector matrix, adding strategies outside the space; None if unparseable."""
        row = self._row.get(sid)
        if row is None:
            try:
                strategy = self.catalog.parse_strategy(sid)
            except Exception:  # noqa: BLE001 - another catalogue's method: the step cannot be used
                return None
            self._matrix = np.concatenate([self._matrix, self._vectors([strategy], [sid])], axis=0)
            row = self._row[sid] = len(self._matrix) - 1
        return row

    def knows(self, record: StepRecord) -> bool:
        """Whether every strategy of ``record`` has a vector (others are skipped by ``fit``)."""
        return all(self._index(s) is not None for s in (*record.parent, record.strategy))

    def _tasks(self, vectors: Sequence[Sequence[float]]) -> Tensor:
        x = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), self.task_dim)
        return torch.from_numpy(np.nan_to_num((x - self.feature_mean) / self.feature_std))

    def _batch(self, parents: Sequence[SchemeKey], candidates: Sequence[str],
               tasks: Sequence[Sequence[float]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The model's inputs: padded parent vectors, parent lengths, candidate vectors, scaled task features."""
        matrix = torch.from_numpy(self._matrix)
        seqs = [matrix[[self._index(s) for s in p]] if p else matrix[:0] for p in parents]
        lengths = torch.tensor([len(p) for p in parents], dtype=torch.long)
        cand = matrix[[self._index(s) for s in candidates]]
        return pad_sequence(seqs, batch_first=True), lengths, cand, self._tasks(tasks)

    # -- training --------------------------------------------------------------------------------------------
    def _loss(self, idx: Tensor, inputs: tuple[Tensor, ...], y: Tensor) -> Tensor:
        pred = self.model(*(x[idx] for x in inputs))
        return torch.mean((pred - y[idx]) ** 2)

    def fit(self, records: Sequence[StepRecord], *, max_steps: int = 2000, patience: int | None = 100,
            holdout: float = 0.2) -> float:
        """Train on ``records`` (MSE on the standardised AR, Adam) until the loss on a held-out share stops
        improving for ``patience`` optimiser steps, at most ``max_steps``; the best weights are kept. Returns the
        mean loss on all ``records`` after training.

        ``patience=None`` trains exactly ``max_steps`` steps (no held-out share). Fewer than ``MIN_HOLDOUT`` records
        watch their own training loss. Scaling is refreshed from ``records`` (pass replayed past steps with the new
        ones). Seeded by the predictor's seed and the number of fits so far: the same sequence of fits gives the
        same weights. ``last_fit`` says how it stopped.
        """
        self.last_fit = {}
        usable = [r for r in records if self.knows(r) and math.isfinite(r.step_ar)]
        if not usable:
            return float("nan")
        feats = np.asarray([r.features for r in usable], dtype=np.float32).reshape(len(usable), self.task_dim)
        targets = np.asarray([[r.step_ar] for r in usable], dtype=np.float32)
        self.feature_mean, self.feature_std = _stats(feats)
        self.target_mean, self.target_std = _stats(targets)
        y = torch.from_numpy((targets - self.target_mean) / self.target_std)
        inputs = self._batch([r.parent for r in usable], [r.strategy for r in usable], [r.features for r in usable])
        n = len(usable)
        step, stopped, best, best_step = 0, "cap", math.inf, 0
        with _seeded(self.seed * 1_000_003 + self.fits):
            order = torch.randperm(n)
            n_out = int(round(n * holdout)) if patience is not None and n >= MIN_HOLDOUT else 0
            held, train = order[:n_out], order[n_out:]
            watch = held if n_out else train
            best_state = None
            opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
            while step < max_steps and stopped == "cap":
                perm = train[torch.randperm(len(train))]
                for b in range(0, len(perm), self.batch_size):
                    self.model.train()
                    opt.zero_grad()
                    self._loss(perm[b:b + self.batch_size], inputs, y).backward()
                    opt.step()
                    step += 1
                    if step >= max_steps:
                        break
                if patience is None:
                    continue
                self.model.eval()  # checked once per pass over the training share (one step when it fits a batch)
                with torch.no_grad():
                    now = float(self._loss(watch, inputs, y))
                if not math.isfinite(best) or now < best - max(MIN_GAIN, 1e-3 * best):  # a gain worth training for
                    best, best_step = now, step
                    best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                elif step - best_step >= patience:
                    stopped = "patience"
            if best_state is not None:
                self.model.load_state_dict(best_state)
            self.model.eval()
            with torch.no_grad():
                loss = float(self._loss(torch.arange(n), inputs, y))
        self.last_fit = {"records": n, "held_out": n_out, "steps": step,
                         "stopped": "fixed" if patience is None else stopped,
                         "held_out_loss": None if not math.isfinite(best) else best, "loss": loss}
        self.fits += 1
        for r in usable:
            key = (r.task, r.parent, r.strategy, r.features)
            if key not in self._seen:
                self._seen.add(key)
                self.trained_on[r.task] += 1
        return loss

    def has_seen(self, record: StepRecord) -> bool:
        """Whether ``record`` (this task and parent, strategy, features) was in any fit so far."""
        return (record.task, record.parent, record.strategy, record.features) in self._seen

    @torch.no_grad()
    def predict(self, parents: Sequence[SchemeKey], candidates: Sequence[str],
                task_vector: Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
        """Predicted AR_step ``(n,)`` of appending ``candidates[i]`` to ``parents[i]``, in one batch.

        ``task_vector`` is one vector for all rows, or one per row.
        """
        n = len(candidates)
        if len(parents) != n:
            raise ValueError("parents and candidates differ in length")
        if not n:
            return np.zeros(0, np.float32)
        tv = np.asarray(task_vector, dtype=np.float32)
        tasks = np.broadcast_to(tv, (n, self.task_dim)) if tv.ndim == 1 else tv
        inputs = self._batch(parents, candidates, tasks)
        self.model.eval()
        with _seeded(self.seed):
            out = self.model(*inputs).numpy()
        return (out * self.target_std + self.target_mean)[:, 0]

    # -- persistence -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able weights, scaling and training record (lists of floats)."""
        return {
            "weights": {k: v.detach().cpu().tolist() for k, v in self.model.state_dict().items()},
            "feature_mean": self.feature_mean.tolist(), "feature_std": self.feature_std.tolist(),
            "target_mean": self.target_mean.tolist(), "target_std": self.target_std.tolist(),
            "fits": self.fits, "trained_on": dict(self.trained_on),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        own = self.model.state_dict()
        self.model.load_state_dict({k: torch.tensor(v, dtype=own[k].dtype) for k, v in state["weights"].items()})
        for name in ("feature_mean", "feature_std", "target_mean", "target_std"):
            setattr(self, name, np.asarray(state[name], dtype=np.float32))
        self.fits = int(state.get("fits", 0))
        self.trained_on = Counter(state.get("trained_on", {}))
