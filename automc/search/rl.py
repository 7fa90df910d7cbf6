"""A recurrent controller trained with REINFORCE (the reinforcement-learning baseline, after NAS controllers).

One LSTM step per scheme position: a softmax over the methods and END, then one softmax per hyperparameter of
the chosen method; the next step reads the embedding of the strategy just chosen. Reward of an evaluated scheme:
``val_acc / base_acc + lam * min(pr, gamma) / gamma - penalty * max(0, gamma - pr) / gamma`` (a FAILED step scores as
accuracy 0 and PR 0). The controller learns from every evaluated scheme once (prefixes the loop evaluated
included), with the log-probability of that scheme under the controller and a moving-average baseline.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from automc.search._base import Context, History, Observation, Option, SchemeKey, SearchStrategy
from automc.search._optuna import fill_random, repair

if TYPE_CHECKING:
    import torch

STATE_VERSION = 1


class _Grid:
    """The catalogue as the controller sees it: methods, each with its hyperparameters' value lists."""

    def __init__(self, strategies: Sequence[Any]) -> None:
        self.methods: list[str] = []
        self.hps: dict[str, list[str]] = {}
        self.values: dict[str, list[list[Any]]] = {}
        self.code: dict[str, tuple[int, tuple[int, ...]]] = {}  # strategy id -> (method index, value indices)
        self.ids: dict[tuple[int, tuple[int, ...]], str] = {}
        for s in strategies:
            if s.method not in self.hps:
                self.methods.append(s.method)
                self.hps[s.method] = [k for k, _ in s.settings]
                self.values[s.method] = [[] for _ in s.settings]
            cols = self.values[s.method]
            idx = []
            for j, (_, v) in enumerate(s.settings):
                if v not in cols[j]:
                    cols[j].append(v)
                idx.append(cols[j].index(v))
            key = (self.methods.index(s.method), tuple(idx))
            self.code[s.id] = key
            self.ids[key] = s.id

    def sizes(self) -> list[list[int]]:
        return [[len(v) for v in self.values[m]] for m in self.methods]


def _build_controller(sizes: list[list[int]], hidden: int, embed: int) -> torch.nn.Module:
    import torch
    from torch import nn

    class Controller(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.start = nn.Parameter(torch.zeros(embed))
            self.method_embed = nn.Embedding(len(sizes), embed)
            self.value_embed = nn.ModuleList(nn.ModuleList(nn.Embedding(v, embed) for v in s) for s in sizes)
            self.cell = nn.LSTMCell(embed, hidden)
            self.method_head = nn.Linear(hidden, len(sizes) + 1)  # the last logit is END
            self.hp_heads = nn.ModuleList(nn.ModuleList(nn.Linear(hidden, v) for v in s) for s in sizes)

        def strategy_embedding(self, method: int, values: tuple[int, ...]) -> torch.Tensor:
            x = self.method_embed.weight[method]
            for j, v in enumerate(values):
                x = x + self.value_embed[method][j].weight[v]
            return x

    return Controller()


def _pack(t: torch.Tensor) -> dict[str, Any]:
    arr = t.detach().cpu().numpy()
    return {"dtype": str(arr.dtype), "shape": list(arr.shape),
            "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")}


def _unpack(d: Mapping[str, Any]) -> torch.Tensor:
    import torch

    arr = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return torch.from_numpy(arr.copy())


def _to_json(obj: Any) -> Any:
    """Tensors become base64 records, tuples lists, dict keys strings (so the state survives ``json``)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {"__tensor__": _pack(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        if "__tensor__" in obj:
            return _unpack(obj["__tensor__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


class RLStrategy(SearchStrategy):
    """REINFORCE on an LSTM controller; its options (``OPTIONS``) weigh the reward and size the controller."""

    name: ClassVar[str] = "rl"
    OPTIONS: ClassVar[Mapping[str, Option]] = {
        "rl_lr": Option("float", 0.05, "the controller's Adam learning rate", above=0),
        "rl_lambda": Option("float", 0.5, "reward weight of PR up to gamma", low=0),
        "rl_penalty": Option("float", 1.0, "reward penalty per share of gamma missed", low=0),
        "rl_beta": Option("float", 0.9, "moving-average weight of the reward baseline", low=0, high=1),
        "rl_hidden": Option("int", 32, "the controller's LSTM width", low=1),
    }

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        opts = self.options
        self.lr = float(opts["rl_lr"])
        self.lam = float(opts["rl_lambda"])
        self.penalty = float(opts["rl_penalty"])
        self.beta = float(opts["rl_beta"])  # moving-average weight of the reward baseline
        self.hidden = int(opts["rl_hidden"])
        self.embed = 16
        self.grid = _Grid(context.space.strategies)
        self._excluded = [i for i, m in enumerate(self.grid.methods) if m in context.space.excluded]
        self.length = int(context.space.max_length)
        self.baseline: float | None = None
        self.learned: set[SchemeKey] = set()
        self.updates = 0
        self._net: Any = None
        self._opt: Any = None

    # -- the controller ------------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if self._net is not None:
            return
        import torch

        # initial weights from the run's seed, without touching the caller's global torch stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.context.seed) & 0xFFFFFFFF)
            self._net = _build_controller(self.grid.sizes(), self.hidden, self.embed)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=self.lr)

    def _method_logits(self, h: torch.Tensor, position: int) -> torch.Tensor:
        logits = self._net.method_head(h)
        if position == 0:  # the empty scheme is the base model: no END first
            logits = logits.clone()
            logits[-1] = float("-inf")
        return logits

    def _log_prob(self, scheme: SchemeKey) -> torch.Tensor:
        """Log-probability that the controller writes ``scheme`` and then stops (teacher forcing)."""
        import torch

        net = self._net
        h = torch.zeros(1, self.hidden)
        c = torch.zeros(1, self.hidden)
        x = net.start
        total = torch.zeros(())
        for pos in range(min(len(scheme) + 1, self.length)):
            h, c = net.cell(x.unsqueeze(0), (h, c))
            logp = torch.log_softmax(self._method_logits(h[0], pos), dim=-1)
            if pos == len(scheme):
                total = total + logp[-1]
                break
            m, values = self.grid.code[scheme[pos]]
            total = total + logp[m]
            for j, v in enumerate(values):
                total = total + torch.log_softmax(net.hp_heads[m][j](h[0]), dim=-1)[v]
            x = net.strategy_embedding(m, values)
        return total

    def _sample(self, rng: np.random.Generator) -> SchemeKey:
        import torch

        net = self._net
        out: list[str] = []
        with torch.no_grad():
            h = torch.zeros(1, self.hidden)
            c = torch.zeros(1, self.hidden)
            x = net.start
            for pos in range(self.length):
                h, c = net.cell(x.unsqueeze(0), (h, c))
                logits = self._method_logits(h[0], pos).clone()
                logits[self._excluded] = float("-inf")  # not in _log_prob: a stored scheme may still use one
                m = _choice(rng, torch.softmax(logits, dim=-1))
                if m == len(self.grid.methods):
                    break
                values = tuple(_choice(rng, torch.softmax(head(h[0]), dim=-1)) for head in net.hp_heads[m])
                out.append(self.grid.ids[(m, values)])
                x = net.strategy_embedding(m, values)
        return tuple(out)

    def method_probabilities(self, prefix: SchemeKey = ()) -> dict[str, float]:
        """The controller's distribution over the next method (and END) after ``prefix``."""
        import torch

        self._ensure()
        net = self._net
        with torch.no_grad():
            h = torch.zeros(1, self.hidden)
            c = torch.zeros(1, self.hidden)
            x = net.start
            for pos in range(len(prefix) + 1):
                h, c = net.cell(x.unsqueeze(0), (h, c))
                if pos < len(prefix):
                    x = net.strategy_embedding(*self.grid.code[prefix[pos]])
            p = torch.softmax(self._method_logits(h[0], len(prefix)), dim=-1).tolist()
        return dict(zip([*self.grid.methods, "END"], p, strict=True))

    # -- learning ------------------------------------------------------------------------------------------
    def reward(self, obs: Observation, base_accuracy: float) -> float:
        gamma = float(self.context.target_pr)
        if not obs.ok or obs.val_accuracy is None or obs.pr is None:
            acc, pr = 0.0, 0.0
        else:
            acc, pr = float(obs.val_accuracy), float(obs.pr)
        return acc / base_accuracy + self.lam * min(pr, gamma) / gamma - self.penalty * max(0.0, gamma - pr) / gamma

    def _learn(self, history: History) -> None:
        batch = [o for o in history if o.scheme and o.scheme not in self.learned]
        if not batch:
            return
        import torch

        self._ensure()
        base = history.base.val_accuracy or 1.0
        rewards = [self.reward(o, base) for o in batch]
        # the first batch is its own baseline, so its advantages are centred rather than all positive
        b = float(np.mean(rewards)) if self.baseline is None else self.baseline
        advantages = torch.tensor([r - b for r in rewards], dtype=torch.float32)
        self._opt.zero_grad()
        logps = torch.stack([self._log_prob(o.scheme) for o in batch])
        loss = -(advantages * logps).mean()
        loss.backward()
        self._opt.step()
        self.updates += 1
        for r in rewards:
            b = self.beta * b + (1.0 - self.beta) * r
        self.baseline = b
        self.learned.update(o.scheme for o in batch)

    def observe(self, history: History, new: Sequence[Observation]) -> None:
        self._learn(history)

    def propose(self, history: History, n: int, rng: np.random.Generator) -> list[SchemeKey]:
        if n <= 0:
            return []
        self._learn(history)  # catches up on evaluations made after the last stored state (a resumed run)
        self._ensure()
        space = self.context.space
        out: list[SchemeKey] = []
        taken: set[SchemeKey] = set()
        for _ in range(10 * n):
            if len(out) >= n:
                break
            scheme = repair(space, self._sample(rng), rng)
            if scheme and not history.tried(scheme) and scheme not in taken:
                taken.add(scheme)
                out.append(scheme)
        return out + fill_random(space, history, taken, n - len(out), rng)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._ensure()
        return {
            "version": STATE_VERSION,
            "baseline": self.baseline,
            "updates": self.updates,
            "learned": sorted(list(s) for s in self.learned),
            "weights": _to_json(self._net.state_dict()),
            "optimizer": _to_json(self._opt.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self._ensure()
        self.baseline = state["baseline"]
        self.updates = int(state["updates"])
        self.learned = {tuple(s) for s in state["learned"]}
        self._net.load_state_dict(_from_json(state["weights"]))
        opt = _from_json(state["optimizer"])
        opt["state"] = {int(k): v for k, v in opt["state"].items()}
        self._opt.load_state_dict(opt)


def _choice(rng: np.random.Generator, probs: torch.Tensor) -> int:
    p = probs.double().numpy()
    return int(rng.choice(len(p), p=p / p.sum()))
