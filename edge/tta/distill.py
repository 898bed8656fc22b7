"""The cloud's half of CEMA: adapt a large foundation model, distil it into the edge model's copy.

Per uploaded batch (only the samples the device selected):
1. the foundation model takes an entropy-minimisation step on its norm affines, with EATA/CEMA's reliability
   weighting ``w = exp(E0 - E)`` on samples with ``E < E0`` (unreliable ones get no gradient);
2. its (adapted) logits become the teacher's soft and hard labels, stored with the batch in a replay buffer;
3. the edge copy's norm affines take ``edge_steps`` steps on the new batch plus a replay sample of
   ``w_ent * weighted entropy + w_kl * T^2 KL(teacher_T || student_T) + w_ce * CE(student, teacher argmax)``;
4. the edge copy's norm affines are what the cloud publishes (same names as the bundle's adaptable inputs).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedge.edge.tta.tent import configure_affine_only, norm_affine_parameters, softmax_entropy


@dataclass(frozen=True)
class CloudConfig:
    """Hyperparameters of the cloud adaptation (defaults picked from a few severity-3 runs; see docs/tta.md)."""

    foundation_lr: float = 1e-3
    edge_lr: float = 5e-3
    edge_steps: int = 4
    temperature: float = 2.0
    w_ent: float = 0.5
    w_kl: float = 1.0
    w_ce: float = 1.0
    e0: float = 0.4  # reliability margin as a fraction of ln C (EATA's E0)
    source_mix: float = 0.0  # teacher = (1 - mix) * foundation + mix * frozen source edge model (probabilities)
    replay_size: int = 1024
    replay_batch: int = 64
    seed: int = 0


def reliability_weights(logits: torch.Tensor, e0: float) -> torch.Tensor:
    """EATA/CEMA sample weights ``exp(E0 - E)`` for ``E < E0``, else 0 (detached)."""
    ent = softmax_entropy(logits.detach())
    return torch.where(ent < e0, torch.exp(e0 - ent), torch.zeros_like(ent))


class ReplayBuffer:
    """FIFO of (input, teacher logits) pairs; sampled uniformly to keep the student from drifting."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.t: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return 0 if self.x is None else len(self.x)

    def add(self, x: torch.Tensor, teacher: torch.Tensor) -> None:
        self.x = x if self.x is None else torch.cat([self.x, x])[-self.capacity:]
        self.t = teacher if self.t is None else torch.cat([self.t, teacher])[-self.capacity:]

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.x is not None and self.t is not None
        idx = torch.randint(len(self.x), (min(n, len(self.x)),), generator=self.gen)
        return self.x[idx], self.t[idx]


class CloudAdapter:
    """Foundation + edge copy + replay buffer; :meth:`adapt` consumes one uploaded batch."""

    def __init__(self, foundation: nn.Module, edge: nn.Module, num_classes: int = 10,
                 cfg: CloudConfig = CloudConfig()) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.e0 = cfg.e0 * math.log(num_classes)
        self.foundation = copy.deepcopy(foundation).eval()
        self.edge = copy.deepcopy(edge).eval()  # GroupNorm: no batch statistics, eval mode is exact
        self.source = copy.deepcopy(edge).eval().requires_grad_(False)
        self.f_opt = torch.optim.Adam(configure_affine_only(self.foundation), lr=cfg.foundation_lr)
        self.e_opt = torch.optim.Adam(configure_affine_only(self.edge), lr=cfg.edge_lr)
        self.replay = ReplayBuffer(cfg.replay_size, cfg.seed)
        self.batches = 0
        self.samples = 0

    def adapt(self, x: np.ndarray) -> dict[str, float]:
        """One cloud round on preprocessed inputs ``x`` (N, C, H, W); returns the losses."""
        cfg = self.cfg
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        logits = self.foundation(xt)
        w = reliability_weights(logits, self.e0)
        f_loss = (w * softmax_entropy(logits)).sum() / max(1, int((w > 0).sum()))
        if w.sum() > 0:
            self.f_opt.zero_grad(set_to_none=True)
            f_loss.backward()
            self.f_opt.step()
        with torch.no_grad():
            teacher = self.foundation(xt)
            if cfg.source_mix > 0:  # a log-probability mixture keeps the teacher as "logits" for KL/CE
                probs = (1 - cfg.source_mix) * teacher.softmax(1) + cfg.source_mix * self.source(xt).softmax(1)
                teacher = probs.clamp_min(1e-12).log()
        self.replay.add(xt, teacher)
        for _ in range(cfg.edge_steps):
            rx, rt = self.replay.sample(cfg.replay_batch)
            bx, bt = torch.cat([xt, rx]), torch.cat([teacher, rt])
            e_loss = self.distill_loss(self.edge(bx), bt)
            self.e_opt.zero_grad(set_to_none=True)
            e_loss.backward()
            self.e_opt.step()
        self.batches += 1
        self.samples += len(xt)
        return {"foundation_loss": float(f_loss.detach()), "edge_loss": float(e_loss.detach()),
                "reliable": float((w > 0).float().mean())}

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Weighted entropy + temperature KL to the teacher + CE on the teacher's pseudo-labels."""
        cfg, tau = self.cfg, self.cfg.temperature
        w = reliability_weights(teacher, self.e0)
        ent = (w * softmax_entropy(student)).sum() / max(1, int((w > 0).sum()))
        kl = F.kl_div(F.log_softmax(student / tau, 1), F.log_softmax(teacher / tau, 1), log_target=True,
                      reduction="batchmean") * tau * tau
        ce = (w * F.cross_entropy(student, teacher.argmax(1), reduction="none")).sum() / max(1, int((w > 0).sum()))
        return cfg.w_ent * ent + cfg.w_kl * kl + cfg.w_ce * ce

    def edge_params(self) -> dict[str, np.ndarray]:
        """The edge copy's norm affines (float32 numpy): what the device swaps into its ONNX session."""
        return {k: p.detach().numpy().astype(np.float32).copy() for k, p in norm_affine_parameters(self.edge).items()}

    def foundation_params(self) -> dict[str, np.ndarray]:
        return {k: p.detach().numpy().astype(np.float32).copy()
                for k, p in norm_affine_parameters(self.foundation).items()}

    def load_params(self, edge: dict[str, np.ndarray], foundation: dict[str, np.ndarray] | None = None) -> None:
        """Restore adapted affines (a cloud restart continues from the last published state)."""
        for model, values in ((self.edge, edge), (self.foundation, foundation or {})):
            params = norm_affine_parameters(model)
            with torch.no_grad():
                for k, v in values.items():
                    params[k].copy_(torch.from_numpy(np.asarray(v, np.float32)))
