r"""A fixed-size replay memory filled by reservoir sampling (Vitter 1985, Algorithm R).

The memory of ER (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning"),
DER and DER++ (Buzzega et al., NeurIPS 2020). It keeps ``memory_size`` samples of the stream
exactly as the algorithm's ``training_step`` receives them (the benchmark's prepared inputs, the
local labels, the task ids) and, for DER, the logits recorded with them.

Reservoir sampling, Algorithm R: the $n$-th sample of the stream ($n = 1, 2, \dots$) goes to slot
$n - 1$ while $n \le m$; afterwards it draws $j$ uniformly from $\{0, \dots, n - 1\}$ and replaces
slot $j$ if $j < m$, i.e. with probability $m / n$. After $n$ samples every one of them is in the
memory with probability $m / n$. The draws depend only on $n$, never on the memory's content, so a
batch is added in one vectorised step: every sample's draw at once, and where two samples of the
batch pick the same slot the later one wins, as it would one sample at a time.

Randomness: the memory's own ``torch.Generator`` (on the CPU, seeded from the run seed) makes the
reservoir and sampling draws; the global RNG is never touched, so a run with replay consumes it
as a run without would, and the generator's state is saved with the module (its extra state), so
a resumed run continues the same draws. The sampled indices (a few hundred integers) move to the
data's device; storing and reading are tensor indexing on that device.

The tensors are buffers of this ``nn.Module``: they follow the algorithm's device and are saved in
its ``state_dict``. They are allocated at the first ``add`` (the input shape is known then) and
resized before loading a checkpoint, so a fresh model loads a filled memory.

Policies (``policy``):

- ``reservoir``: Algorithm R above (ER, DER, DER++, A-GEM, ER-ACE);
- ``balanced``: GDumb's greedy class-balanced sampler (Prabhu et al., ECCV 2020, Sec. 3,
  Algorithm 1): a sample of class $c$ is stored while $|M_c| < m / |\mathcal{Y}|$ ($\mathcal{Y}$:
  the classes seen so far); when the memory is full, a random sample of the largest class
  makes room. Each decision depends on the counts the previous one left, so the decisions are
  a loop over the batch's integers (class ids, counts, slots); the tensors are then written in
  one indexed copy, as for the reservoir;
- herding (iCaRL) selects whole exemplar sets at a task's end from features
  (``clcore.components.herding``) and stores them with ``set_contents``.

Inputs are stored in the dtype they arrive in: replay algorithms receive the benchmark's uint8
images (``prepares_training_inputs``) and store those, a quarter of float32's bytes, and prepare
a memory batch with the current one (each sample with its own task's transform).

Helpers for a memory batch that mixes tasks: ``replay_logits`` (each sample through its own
task's head in TIL, the one grown head in CIL, the shared head in DIL), ``replay_targets`` and
``global_class_ids`` (one id per class of the sequence, what the balanced policy counts).
"""

from __future__ import annotations

import bisect

import torch
from torch import Tensor, nn

from clcore.heads.base import CLHeads

_BUFFERS = ("inputs", "labels", "task_ids", "class_ids", "logits", "logit_widths")
# what ``sample`` returns without logits
_SAMPLE_FIELDS = ("inputs", "labels", "task_ids", "class_ids")
POLICIES = ("reservoir", "balanced")


class ReplayMemory(nn.Module):
    """Memory of ``memory_size`` samples: inputs, labels, task ids, class ids and optional logits.

    Args:
        memory_size: number of samples kept, $m > 0$.
        seed: seed of the memory's own generator (the run seed).
        policy: ``reservoir`` or ``balanced`` (see the module docstring).
    """

    def __init__(self, memory_size: int, seed: int = 0, policy: str = "reservoir") -> None:
        super().__init__()
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size <= 0:
            raise ValueError(f"memory_size must be an integer > 0, got {memory_size!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.memory_size = memory_size
        self.policy = policy
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.seen = 0  # samples of the stream offered so far (n)
        self.count = 0  # slots filled: min(n, m) for the reservoir
        for name in _BUFFERS:
            self.register_buffer(name, torch.empty(0))

    def __len__(self) -> int:
        """Samples held (the reservoir: $\\min(n, m)$)."""
        return self.count

    @property
    def has_logits(self) -> bool:
        return self.logits.numel() > 0

    def memory_bytes(self) -> int:
        """Footprint of the stored tensors in bytes (allocated for all $m$ slots)."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self.buffers())

    # ---- reservoir --------------------------------------------------------------------------
    def reservoir_slots(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """Algorithm R for the next ``batch_size`` samples: ``(slots, positions)`` on the CPU.

        ``positions[k]`` (index into the batch) is written to ``slots[k]``; slots are distinct
        (the last sample of the batch to pick a slot wins). Advances ``seen`` and the generator.
        """
        m = self.memory_size
        n = torch.arange(self.seen + 1, self.seen + batch_size + 1, dtype=torch.int64)
        # j uniform on {0, ..., n - 1}: floor(U n), U in [0, 1) in double precision
        draws = (torch.rand(batch_size, generator=self.generator, dtype=torch.float64) * n).long()
        slots = torch.where(n <= m, n - 1, draws)
        keep = slots < m
        positions = torch.arange(batch_size)[keep]
        winner = torch.full((m,), -1, dtype=torch.int64)
        winner.scatter_reduce_(0, slots[keep], positions, reduce="amax")
        written = (winner >= 0).nonzero().squeeze(1)
        self.seen += batch_size
        self.count = min(self.seen, m)
        return written, winner[written]

    def balanced_slots(self, class_ids: Tensor) -> tuple[Tensor, Tensor]:
        """GDumb's greedy class-balanced decisions for a batch: ``(slots, positions)`` on the CPU.

        Sample $i$ of class $c$ is stored while $|M_c| < m / |\\mathcal{Y}|$; into a free slot
        while there is one, else into the slot of a random sample of the largest class (ties:
        the lowest class id). A slot taken twice in the batch keeps the later sample.
        """
        m = self.memory_size
        held = self.class_ids[: self.count].tolist() if self.count else []
        members: dict[int, list[int]] = {}
        for slot, c in enumerate(held):
            members.setdefault(c, []).append(slot)
        winner: dict[int, int] = {}
        for position, c in enumerate(class_ids.tolist()):
            members.setdefault(c, [])
            if len(members[c]) >= m / len(members):
                continue
            if self.count < m:
                slot = self.count
                self.count += 1
            else:
                largest = max(members, key=lambda k: (len(members[k]), -k))
                victims = members[largest]
                slot = victims.pop(int(torch.randint(len(victims), (1,), generator=self.generator)))
            # in slot order, as the next call rebuilds it: the random victim is then the same
            # slot whether the batch is offered at once or one sample at a time
            bisect.insort(members[c], slot)
            winner[slot] = position
        self.seen += len(class_ids)
        slots = torch.tensor(sorted(winner), dtype=torch.int64)
        return slots, torch.tensor([winner[k] for k in sorted(winner)], dtype=torch.int64)

    def _allocate(self, x: Tensor, logits: Tensor | None) -> None:
        m, device = self.memory_size, x.device
        self.inputs = torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=device)
        self.labels = torch.zeros(m, dtype=torch.int64, device=device)
        self.task_ids = torch.zeros(m, dtype=torch.int64, device=device)
        self.class_ids = torch.zeros(m, dtype=torch.int64, device=device)
        if logits is not None:
            self.logits = torch.zeros((m, logits.shape[1]), dtype=logits.dtype, device=device)
            self.logit_widths = torch.zeros(m, dtype=torch.int64, device=device)

    def add(
        self,
        x: Tensor,
        labels: Tensor,
        task_id: int | Tensor,
        logits: Tensor | None = None,
        class_ids: Tensor | None = None,
    ) -> None:
        """Offer a batch to the memory under its policy (detached copies are stored).

        ``task_id``: one task for the batch or a tensor of one per sample. ``logits``: ``[B, W]``
        recorded with the samples (DER); their width may grow across tasks (CIL's grown head), and
        each sample remembers how many columns it has (``logit_widths``). ``class_ids``: one id
        per class of the sequence (``global_class_ids``), what the balanced policy counts;
        default: the labels.
        """
        batch_size = x.shape[0]
        if self.inputs.numel() == 0:
            self._allocate(x, logits)
        if (logits is None) == self.has_logits:
            raise ValueError("ReplayMemory: give logits with every batch or with none")
        class_ids = labels if class_ids is None else class_ids
        if self.policy == "balanced":
            slots, positions = self.balanced_slots(class_ids.cpu())
        else:
            slots, positions = self.reservoir_slots(batch_size)
        if slots.numel() == 0:
            return
        device = self.inputs.device
        slots, positions = slots.to(device, non_blocking=True), positions.to(device, non_blocking=True)
        self.inputs[slots] = x.detach()[positions].to(self.inputs.dtype)
        self.labels[slots] = labels[positions].long()
        self.class_ids[slots] = class_ids.to(device)[positions].long()
        if isinstance(task_id, Tensor):
            self.task_ids[slots] = task_id.to(device)[positions].long()
        else:
            self.task_ids[slots] = int(task_id)
        if logits is not None:
            width = logits.shape[1]
            if width > self.logits.shape[1]:  # the head grew: widen, new columns zero (masked)
                extra = self.logits.new_zeros((self.memory_size, width - self.logits.shape[1]))
                self.logits = torch.cat([self.logits, extra], dim=1)
            rows = self.logits.new_zeros((slots.numel(), self.logits.shape[1]))
            rows[:, :width] = logits.detach()[positions]
            self.logits[slots] = rows
            self.logit_widths[slots] = width

    def sample(self, batch_size: int) -> dict[str, Tensor]:
        """``min(batch_size, len(self))`` distinct stored samples, drawn uniformly without replacement.

        Returns ``inputs``, ``labels``, ``task_ids``, ``class_ids`` and, where stored, ``logits``
        and ``logit_widths``.
        """
        size = len(self)
        if size == 0:
            raise RuntimeError("ReplayMemory.sample: the memory is empty")
        index = torch.randperm(size, generator=self.generator)[:batch_size].to(self.inputs.device)
        return {name: getattr(self, name)[index] for name in self._fields()}

    def contents(self) -> dict[str, Tensor]:
        """Every held sample, in slot order (views of the first ``len(self)`` slots)."""
        return {name: getattr(self, name)[: self.count] for name in self._fields()}

    def _fields(self) -> tuple[str, ...]:
        return _BUFFERS if self.has_logits else _SAMPLE_FIELDS

    def set_contents(self, inputs: Tensor, labels: Tensor, task_ids: Tensor, class_ids: Tensor) -> None:
        """Replace the whole memory with these samples (at most ``memory_size``): for a policy that
        selects exemplar sets itself (iCaRL's herding) rather than sample by sample."""
        k = inputs.shape[0]
        if k > self.memory_size:
            raise ValueError(f"set_contents: {k} samples do not fit a memory of {self.memory_size}")
        if self.has_logits:
            raise ValueError("set_contents: this memory stores logits; give them with add")
        if self.inputs.numel() == 0 or self.inputs.shape[1:] != inputs.shape[1:]:
            self._allocate(inputs, None)
        self.inputs[:k] = inputs.to(self.inputs.dtype)
        self.labels[:k] = labels.long()
        self.task_ids[:k] = task_ids.long()
        self.class_ids[:k] = class_ids.long()
        self.count = k

    # ---- checkpoint -------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {
            "seen": self.seen,
            "count": self.count,
            "generator": self.generator.get_state(),
            "memory_size": self.memory_size,
            "policy": self.policy,
        }

    def set_extra_state(self, state: dict) -> None:
        if state["memory_size"] != self.memory_size:
            raise ValueError(
                f"the checkpoint's replay memory holds {state['memory_size']} samples, this one {self.memory_size}"
            )
        if state.get("policy", "reservoir") != self.policy:
            raise ValueError(
                f"the checkpoint's replay memory uses policy {state['policy']}, this one {self.policy}"
            )
        self.seen = int(state["seen"])
        self.count = int(state.get("count", min(self.seen, self.memory_size)))
        self.generator.set_state(state["generator"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The buffers' shapes are known only once filled: take the saved ones before copying.
        for name in _BUFFERS:
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def replay_logits(heads: CLHeads, features: Tensor, task_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Logits of samples that may come from different tasks, and which columns are real.

    - TIL: each sample through its own task's head (one head call per seen task, then a gather;
      no host synchronisation), padded to the widest head; ``valid[i, c]`` is ``c <`` the
      classes of sample ``i``'s task;
    - CIL: the one grown head over every class seen so far (all columns valid);
    - DIL: the shared head (all columns valid).

    Returns ``(logits [B, W], valid [B, W] bool)``.
    """
    if heads.paradigm != "til":
        logits = heads(features, heads.num_tasks_seen - 1)
        return logits, torch.ones_like(logits, dtype=torch.bool)
    widths = torch.tensor(heads.classes_per_task, device=features.device)
    width = int(max(heads.classes_per_task))
    per_task = torch.stack(
        [
            nn.functional.pad(heads(features, t), (0, width - heads.classes_per_task[t]))
            for t in range(heads.num_tasks_seen)
        ]
    )  # [T, B, W]
    logits = per_task[task_ids, torch.arange(features.shape[0], device=features.device)]
    valid = torch.arange(width, device=features.device) < widths[task_ids].unsqueeze(1)
    return logits, valid


def replay_targets(heads: CLHeads, labels: Tensor, task_ids: Tensor) -> Tensor:
    """``heads.targets`` for a batch mixing tasks: CIL adds each sample's task's class offset."""
    if heads.paradigm == "cil":
        return labels + heads.task_class_offsets(labels.device)[task_ids]
    return labels


def global_class_ids(heads: CLHeads, labels: Tensor, task_ids: Tensor) -> Tensor:
    """One id per class of the sequence: task $t$'s local label $y$ is
    $\\sum_{s < t} C_s + y$ in TIL and CIL (the classes are the tasks' own); in DIL every task
    has the same classes, so the id is the label."""
    if heads.paradigm == "dil":
        return labels
    return labels + heads.task_class_offsets(labels.device)[task_ids]


def masked_cross_entropy(logits: Tensor, valid: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over each sample's real columns only (padding columns get $-\\infty$)."""
    return nn.functional.cross_entropy(logits.masked_fill(~valid, float("-inf")), targets)
