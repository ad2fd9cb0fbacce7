"""TAK's merge conventions ("mammoth": the reference's TIES / DARE; "paper"), Iso-CTS, and reading the
reference's task-vector files.

Hand-made task vectors with the expected merges written out; Iso-CTS against an independent float64
NumPy transcription of the official algorithm (danielm1405/iso-merging, ``src/utils/iso.py``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clcore.algorithms.tak.merging import (
    dare_task_seed,
    mammoth_dare_masks,
    mammoth_ties_tensor,
    merge_task_vectors,
)
from clcore.algorithms.tak.task_vector_files import (
    mammoth_parameter_name,
    mammoth_task_vector_file,
    read_mammoth_task_vector,
)
from clcore.task_arithmetic import LinearTaskVector, TaskVector
from clcore.task_arithmetic.merging import (
    MERGE_METHODS,
    iso,
    iso_cts,
    iso_cts_sizes,
    merge,
    ta,
    ties,
    ties_keep_count,
)


def _close(actual: dict, expected: dict, atol: float = 1e-12) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(
            actual[name], torch.as_tensor(tensor, dtype=actual[name].dtype), atol=atol, rtol=0
        )


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# -- TIES: the reference's per-tensor rule -----------------------------------------------------
HAND = [
    {"w": _t([[5.0, -1.0, 0.5], [2.0, -4.0, 0.1]]), "b": _t([1.0, -2.0, 3.0])},
    {"w": _t([[-3.0, 2.0, 0.2], [6.0, -0.3, 1.0]]), "b": _t([0.5, 0.5, -1.0])},
]


def test_mammoth_ties_trims_each_2d_tensor_and_sums_the_rest():
    # w: n = 6, k = 0.2 -> int(1.2) + 1 = 2 kept per task: task 1 {5, -4}, task 2 {6, -3}.
    # elected signs: w00 sgn(5 - 3) = +, w10 +, w11 -, the rest 0 -> the majority's (+, + and -: +).
    # disjoint means: w00 5 (the positive one), w10 6, w11 -4, the rest 0. b is summed untouched.
    merged = merge_task_vectors(HAND, "ties", "one", tangent=False, ties_k=0.2)
    _close(merged, {"w": [[5.0, 0.0, 0.0], [6.0, -4.0, 0.0]], "b": [1.5, -1.5, 2.0]})
    # alpha = 4 over 2 vectors: 2 x the same (alpha / k, as the reference)
    doubled = merge_task_vectors(HAND, "ties", 4.0, tangent=False, ties_k=0.2, convention="mammoth")
    _close(doubled, {"w": [[10.0, 0.0, 0.0], [12.0, -8.0, 0.0]], "b": [3.0, -3.0, 4.0]})
    # the paper's TIES trims the whole vector (9 entries: int(1.8) + 1 = 2 kept): b is trimmed away
    paper = merge_task_vectors(HAND, "ties", "one", tangent=False, ties_k=0.2, convention="paper")
    _close(paper, {"w": [[5.0, 0.0, 0.0], [6.0, -4.0, 0.0]], "b": [0.0, 0.0, 0.0]})


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # entry 0 sums to 0: it takes the majority sign (+: one + election, entry 1) -> the positive 2
        ([[2.0, 1.0]], [[-2.0, 1.0]], [[2.0, 1.0]]),
        # majority - -> the negative -2
        ([[2.0, -1.0]], [[-2.0, -1.0]], [[-2.0, -1.0]]),
        # elected (0, +, -): the majority is 0 too, and a 0 sign selects the negative values
        ([[2.0, 3.0, -4.0]], [[-2.0, 1.0, 1.0]], [[-2.0, 2.0, -4.0]]),
    ],
)
def test_mammoth_ties_sign_election_and_disjoint_mean(first, second, expected):
    merged = merge_task_vectors([{"w": _t(first)}, {"w": _t(second)}], "ties", "one", False, ties_k=1.0)
    _close(merged, {"w": expected})
    # the paper's Alg. 1: a zero sum has no sign and merges to 0
    paper = merge_task_vectors(
        [{"w": _t(first)}, {"w": _t(second)}], "ties", "one", False, ties_k=1.0, convention="paper"
    )
    zero_sum = (_t(first) + _t(second)) == 0
    assert (paper["w"][zero_sum] == 0).all()


def _official_kept(n: int, k: float) -> int:
    """How many entries the official ``topk_values_mask`` keeps (distinct magnitudes), written out."""
    magnitudes = torch.arange(1, n + 1, dtype=torch.float64)
    kth = magnitudes.kthvalue(n - int(n * k)).values
    return int((magnitudes >= kth).sum())


@pytest.mark.parametrize(
    ("n", "k", "kept"),
    [
        (10, 0.2, 3),
        (13, 0.2, 3),
        (15, 0.2, 4),
        (6, 0.5, 4),
        (5, 0.2, 2),
        (4, 0.1, 1),
        (7, 1.0, 7),
        (100, 0.2, 21),
    ],
)
def test_keep_count_is_int_k_n_plus_one(n, k, kept):
    assert ties_keep_count(n, k) == kept
    if k < 1:
        assert _official_kept(n, k) == kept
    vector = {"w": torch.linspace(1.0, 2.0, n, dtype=torch.float64).reshape(1, n) * (-1) ** torch.arange(n)}
    assert int((ties([vector], k=k)["w"] != 0).sum()) == kept  # the library (whole vector)
    assert int((mammoth_ties_tensor(vector["w"][None], k) != 0).sum()) == kept  # the reference (per tensor)
    mammoth = merge_task_vectors([vector], "ties", "one", tangent=False, ties_k=k)
    assert int((mammoth["w"] != 0).sum()) == kept


def test_mammoth_ties_thresholds_per_task_and_tensor():
    # each task keeps its own top entries of each tensor, whatever the other tensors' magnitudes
    small = {"w": _t([[0.1, 0.3, 0.2, 0.4]]), "v": _t([[10.0, 30.0, 20.0, 40.0]])}
    big = {"w": _t([[5.0, 1.0, 2.0, 3.0]]), "v": _t([[0.0, 0.0, 0.0, 0.0]])}
    # k = 0.25: int(1) + 1 = 2 per task and tensor
    merged = merge_task_vectors([small, big], "ties", "one", tangent=False, ties_k=0.25)
    # w: small keeps 0.3, 0.4; big keeps 5, 3 -> w0 5, w1 0.3, w3 (0.4 + 3) / 2
    _close(merged, {"w": [[5.0, 0.3, 0.0, 1.7]], "v": [[0.0, 30.0, 0.0, 40.0]]})


# -- DARE: 2-D tensors only, seeded, never the global RNG -------------------------------------------
def test_mammoth_dare_drops_2d_entries_only_and_rescales():
    p = 0.5
    masks = [mammoth_dare_masks(vector, p, seed=7, task=task) for task, vector in enumerate(HAND)]
    assert [set(m) for m in masks] == [{"w"}, {"w"}]  # no mask for the 1-D entry
    merged = merge_task_vectors(HAND, "dare", "one", tangent=False, dare_p=p, seed=7)
    expected_w = (HAND[0]["w"] * masks[0]["w"] + HAND[1]["w"] * masks[1]["w"]) / (1 - p)
    _close(merged, {"w": expected_w, "b": HAND[0]["b"] + HAND[1]["b"]})
    # p = 0: nothing dropped, the sum; alpha / k as the reference
    _close(
        merge_task_vectors(HAND, "dare", 3.0, tangent=False, dare_p=0.0, seed=7),
        {"w": [[3.0, 1.5, 1.05], [12.0, -6.45, 1.65]], "b": [2.25, -2.25, 3.0]},
    )
    # a single task: each 2-D entry is dropped or tau / (1 - p)
    single = merge_task_vectors(HAND[:1], "dare", "one", tangent=False, dare_p=p, seed=3)["w"]
    kept = single != 0
    torch.testing.assert_close(single[kept], HAND[0]["w"][kept] / (1 - p))


def test_mammoth_dare_keeps_one_minus_p_and_a_tasks_mask_across_merges():
    p = 0.7
    big = {"w": torch.ones(300, 200, dtype=torch.float64), "b": torch.ones(5, dtype=torch.float64)}
    kept = float(
        (merge_task_vectors([big], "dare", "one", False, dare_p=p, seed=1)["w"] != 0).double().mean()
    )
    assert abs(kept - (1 - p)) < 0.01
    # task 1's mask is drawn once: the same whether 1 or 2 vectors are merged (the second one zero)
    zero = {name: torch.zeros_like(tensor) for name, tensor in big.items()}
    alone = merge_task_vectors([big], "dare", "one", False, dare_p=p, seed=1)
    with_zero = merge_task_vectors([big, zero], "dare", "one", False, dare_p=p, seed=1)
    _close(with_zero, alone)


@pytest.mark.parametrize("convention", ["mammoth", "paper"])
def test_dare_mask_follows_the_seed_and_spares_the_global_rng(convention):
    vectors = [{"w": torch.ones(20, 10), "b": torch.ones(10)} for _ in range(2)]

    def run(seed):
        return merge_task_vectors(vectors, "dare", "one", False, dare_p=0.5, seed=seed, convention=convention)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again, other = run(5), run(5), run(6)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    _close(again, first, atol=0)
    assert not torch.equal(first["w"], other["w"])
    assert dare_task_seed(5, 0) != dare_task_seed(5, 1) != dare_task_seed(6, 0)


def test_convention_is_checked():
    with pytest.raises(ValueError, match="convention"):
        merge_task_vectors(HAND, "ta", "one", False, convention="reference")


# -- "paper": today's behaviour, pinned ------------------------------------------------------------
def _pinned_example() -> list[dict[str, torch.Tensor]]:
    vectors = []
    for t in range(3):
        w = [[math.sin(1.0 + 12 * t + 3 * i + j) * (1 + 0.1 * i) for j in range(3)] for i in range(4)]
        vectors.append({"w": _t(w), "b": _t([math.cos(2.0 + 5 * t + j) for j in range(2)])})
    return vectors


# The output of merge_task_vectors before conventions existed (that is, the library's merge with
# DARE seeded 0), on ``_pinned_example``. Its 14 entries per task keep 3 with TIES under both keep
# rules (round(2.8) and int(2.8) + 1), so TIES is pinned too.
PINNED = {
    ("ta", "one"): {
        "w": [
            [1.1292862715367642, 2.662463233000155, 1.7477837766214872],
            [-0.851180026031637, -2.842351215831229, -2.2202778059698103],
            [0.4833913956704117, 2.9444762143112397, 2.698423180662096],
            [-0.030926654277674714, -2.956711264288633, -3.164109173485227],
        ],
        "b": [1.1816093765286544, -0.22804574895886287],
    },
    ("ta", 1.5): {
        "w": [
            [0.5646431357683821, 1.3312316165000775, 0.8738918883107436],
            [-0.4255900130158185, -1.4211756079156146, -1.1101389029849051],
            [0.24169569783520586, 1.4722381071556199, 1.349211590331048],
            [-0.015463327138837357, -1.4783556321443165, -1.5820545867426135],
        ],
        "b": [0.5908046882643272, -0.11402287447943144],
    },
    ("ties", "one"): {
        "w": [
            [0.0, 0.0, 0.0],
            [0.0, -1.0548167021294523, -1.0868347865021482],
            [0.0, 1.1413820984106056, 1.1998942321287205],
            [0.0, -1.2000368969718183, -1.2332821900423308],
        ],
        "b": [0.0, 0.0],
    },
    ("ties", 2.4): {
        "w": [
            [0.0, 0.0, 0.0],
            [0.0, -0.8438533617035618, -0.8694678292017185],
            [0.0, 0.9131056787284844, 0.9599153857029763],
            [0.0, -0.9600295175774545, -0.9866257520338645],
        ],
        "b": [0.0, 0.0],
    },
    ("dare", "one"): {
        "w": [
            [0.0, 3.030991422752272, 3.187919761348343],
            [0.0, 0.0, -2.753619904829479],
            [0.0, 6.163139711460288, 0.0],
            [-0.03835567359175013, 0.0, -3.924172902028703],
        ],
        "b": [2.513007514477682, -3.7849751013635293],
    },
    ("iso", 0.7): {
        "w": [
            [0.18684378636128998, 0.5994328251316626, -0.2759176039527694],
            [-0.48915760161949584, -0.0176479631828903, -0.37237819540116895],
            [0.06214454469873669, 0.15109815161689555, 0.36521660744593776],
            [0.4385425674475642, -0.2964885727163894, -0.3495541055225744],
        ],
        "b": [0.2757088545233527, -0.053210674757068005],
    },
    ("tsv", "one"): {
        "w": [
            [0.3466393411440521, -0.651412285140825, 2.7486346296908932],
            [1.9704288746193166, -1.5465351278361592, -0.5191673364754825],
            [0.05314242898315823, 1.5316141893578459, 0.4547696005357291],
            [-1.971725512957608, -1.7157619003821265, -0.09961125226232385],
        ],
        "b": [0.39386979217621815, -0.0760152496529543],
    },
}


@pytest.mark.parametrize(("method", "alpha"), list(PINNED))
def test_paper_convention_is_the_merge_of_before(method, alpha):
    merged = merge_task_vectors(_pinned_example(), method, alpha, tangent=False, convention="paper", seed=0)
    _close(merged, PINNED[(method, alpha)], atol=1e-12)


def test_paper_ties_keep_count_changed_to_the_official_one():
    # 10 entries, k = 0.2: the official code keeps int(2.0) + 1 = 3 (before: round(2.0) = 2)
    vector = {"w": _t([[1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0, 9.0, -10.0]])}
    merged = merge_task_vectors([vector], "ties", "one", tangent=False, convention="paper")
    _close(merged, {"w": [[0.0] * 7 + [-8.0, 9.0, -10.0]]})


# -- Iso-CTS ---------------------------------------------------------------------------------
def _polar(matrix: np.ndarray) -> np.ndarray:
    left, _, right_t = np.linalg.svd(matrix, full_matrices=False)
    return left @ right_t


def _official_iso_cts(matrices: list[np.ndarray], fraction: float) -> np.ndarray:
    """Iso-CTS of one 2-D weight, transcribed step by step from the official code (float64)."""
    num_tasks = len(matrices)
    rank = min(matrices[0].shape)
    common = int(rank * fraction)
    task_total = round((rank - common) / num_tasks) * num_tasks
    common = rank - task_total
    assert common >= 0, "the official code slices with a negative index here"
    left, values, right_t = np.linalg.svd(sum(matrices), full_matrices=False)
    common_left, common_values, common_right_t = left[:, :common], values[:common], right_t[:common, :]
    per_task = int((rank - common) / num_tasks)
    combined_left = np.zeros((matrices[0].shape[0], rank))
    combined_values = np.zeros(rank)
    combined_right_t = np.zeros((rank, matrices[0].shape[1]))
    for i, matrix in enumerate(matrices):
        outside = matrix - common_left @ common_left.T @ matrix
        task_left, task_values, task_right_t = np.linalg.svd(outside, full_matrices=False)
        combined_left[:, i * per_task : (i + 1) * per_task] = task_left[:, :per_task]
        combined_values[i * per_task : (i + 1) * per_task] = task_values[:per_task]
        combined_right_t[i * per_task : (i + 1) * per_task, :] = task_right_t[:per_task, :]
    start = num_tasks * per_task
    combined_left[:, start : start + common] = common_left
    combined_values[start : start + common] = common_values
    combined_right_t[start : start + common, :] = common_right_t
    flat = np.full(rank, combined_values.mean())
    return _polar(combined_left) @ np.diag(flat) @ _polar(combined_right_t)


def _random_vectors(count: int, shape: tuple[int, int], seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(*shape, generator=generator, dtype=torch.float64),
            "b": torch.randn(shape[0], generator=generator, dtype=torch.float64),
        }
        for _ in range(count)
    ]


@pytest.mark.parametrize(
    ("count", "shape", "fraction"),
    [
        (3, (12, 9), 0.8),
        (2, (7, 10), 0.8),
        (5, (16, 16), 0.5),
        (4, (20, 13), 0.3),
        (3, (9, 9), 1.0),
        (2, (10, 6), 0.0),
        (1, (8, 5), 0.8),
    ],
)
def test_iso_cts_matches_the_official_algorithm(count, shape, fraction):
    vectors = _random_vectors(count, shape, seed=count * 100 + shape[0])
    merged = iso_cts(vectors, common_space_fraction=fraction, alpha=1.3)
    expected = _official_iso_cts([v["w"].numpy() for v in vectors], fraction)
    torch.testing.assert_close(merged["w"], torch.from_numpy(1.3 * expected), atol=1e-10, rtol=0)
    torch.testing.assert_close(merged["b"], 1.3 * torch.stack([v["b"] for v in vectors]).mean(0))
    _close(dict(merge(vectors, "iso_cts", common_space_fraction=fraction, alpha=1.3).vector), merged.vector)


def test_iso_cts_properties():
    vectors = _random_vectors(3, (12, 9), seed=4)
    merged = iso_cts(vectors)["w"]
    # a flat spectrum over the full rank
    values = torch.linalg.svdvals(merged)
    torch.testing.assert_close(values, torch.full_like(values, values.mean().item()), atol=1e-10, rtol=0)
    # one task vector: Iso-C of it (every direction is its own)
    torch.testing.assert_close(iso_cts(vectors[:1])["w"], iso(vectors[:1])["w"], atol=1e-10, rtol=0)
    # fraction 1: Iso-C of the sum, i.e. T x the library's Iso-C (which uses the mean)
    torch.testing.assert_close(
        iso_cts(vectors, common_space_fraction=1.0)["w"], 3 * iso(vectors)["w"], atol=1e-10, rtol=0
    )
    # orthogonal tasks, no common space: each task's 3 directions, mean singular value (3+2+1+6+5+4)/6
    block = torch.zeros(2, 6, 6, dtype=torch.float64)
    block[0, :3, :3] = torch.diag(_t([3.0, 2.0, 1.0]))
    block[1, 3:, 3:] = torch.diag(_t([6.0, 5.0, 4.0]))
    flat = iso_cts([{"w": block[0]}, {"w": block[1]}], common_space_fraction=0.0)["w"]  # 3 + 3 directions
    torch.testing.assert_close(flat, torch.eye(6, dtype=torch.float64) * 3.5, atol=1e-10, rtol=0)
    # float32 in, float32 out
    assert (
        iso_cts([{k: v.float() for k, v in vector.items()} for vector in vectors])["w"].dtype == torch.float32
    )


def test_iso_cts_sizes_and_knobs():
    assert iso_cts_sizes(768, 8, 0.8) == (616, 19)  # int(614.4) = 614; round(154 / 8) * 8 = 152
    assert iso_cts_sizes(768, 1, 0.8) == (614, 154)
    assert iso_cts_sizes(10, 3, 1.0) == (10, 0)
    assert iso_cts_sizes(3, 2, 0.0) == (1, 1)  # the official round(1.5) * 2 = 4 > 3: rounded down
    assert "iso_cts" in MERGE_METHODS
    vectors = _random_vectors(2, (5, 4), seed=1)
    for fraction in (-0.1, 1.5):
        with pytest.raises(ValueError, match="common_space_fraction"):
            merge(vectors, "iso_cts", common_space_fraction=fraction)
    with pytest.raises(ValueError, match="no knob"):
        merge(vectors, "iso_cts", k=0.2)


def test_tak_iso_cts_uses_alpha_as_it_is():
    vectors = _random_vectors(3, (6, 5), seed=2)
    for convention in ("mammoth", "paper"):
        merged = merge_task_vectors(
            vectors, "iso_cts", 2.0, tangent=True, convention=convention, common_space_fraction=0.5
        )
        _close(merged, iso_cts(vectors, common_space_fraction=0.5, alpha=2.0).vector, atol=1e-12)
    _close(merge_task_vectors(vectors, "iso_cts", "one", tangent=False), iso_cts(vectors).vector)
    _close(merge_task_vectors(vectors, "ta", "one", tangent=False), ta(vectors).vector)


# -- the reference's task-vector files -----------------------------------------------------------
def _reference_names(layers: int) -> list[str]:
    """The visual-encoder parameter names of the reference after its CLIP surgery, in its order."""
    names = ["positional_embedding", "conv1.weight", "ln_pre.weight", "ln_pre.bias"]
    for i in range(layers):
        block = f"transformer.resblocks.{i}."
        names += [
            block + suffix
            for suffix in (
                "attn.qkv.weight",
                "attn.qkv.bias",
                "attn.proj.weight",
                "attn.proj.bias",
                "ln_1.weight",
                "ln_1.bias",
                "mlp.c_fc.weight",
                "mlp.c_fc.bias",
                "mlp.c_proj.weight",
                "mlp.c_proj.bias",
                "ln_2.weight",
                "ln_2.bias",
            )
        ]
    return names + ["ln_post.weight", "ln_post.bias", "lin_proj.weight", "cls_token_layer.class_embedding"]


def _write_reference_files(folder, prefix, task, tensors, names, args=None):
    """The files the reference's TAK.end_task writes with --save_task_vectors=1 (and its args json)."""
    # delta_w_dict entries are float32 tensors created with requires_grad; saved as clone().cpu()
    params = [tensor.clone().float().requires_grad_(True) for tensor in tensors]
    base = folder / f"{prefix}_task_{task}"
    torch.save([param.clone().cpu() for param in params], str(base) + ".pt")
    torch.save({"weight": torch.randn(6, 4) * 100, "bias": torch.zeros(6)}, str(base) + "_cls_head.pt")
    torch.save({"delta_w_names": list(names)}, str(base) + "_meta.pt")
    if args is not None:
        (folder / f"{prefix}_args.json").write_text(json.dumps(args))
    return base.with_suffix(".pt")


def test_reference_file_maps_to_clcore_names(tmp_path):
    names = _reference_names(1)
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 2, generator=generator) for _ in names]
    path = _write_reference_files(tmp_path, "7_seq-cifar100", 2, tensors, names, {"tangent": 1, "lr": 1e-4})
    assert path == mammoth_task_vector_file(tmp_path / "7_seq-cifar100_args.json", 2)
    assert path == mammoth_task_vector_file(tmp_path / "7_seq-cifar100", 2)
    content = read_mammoth_task_vector(path)
    assert content["kind"] == "linear" and content["task"] == 3 and content["unmapped"] == []
    expected = {
        "visual.trunk.positional_embedding",
        "visual.trunk.conv1.weight",
        "visual.trunk.ln_pre.weight",
        "visual.trunk.ln_pre.bias",
        "visual.trunk.transformer.resblocks.0.attn.in_proj.weight",
        "visual.trunk.transformer.resblocks.0.attn.in_proj.bias",
        "visual.trunk.transformer.resblocks.0.attn.out_proj.weight",
        "visual.trunk.transformer.resblocks.0.attn.out_proj.bias",
        "visual.trunk.transformer.resblocks.0.ln_1.weight",
        "visual.trunk.transformer.resblocks.0.ln_1.bias",
        "visual.trunk.transformer.resblocks.0.mlp.c_fc.weight",
        "visual.trunk.transformer.resblocks.0.mlp.c_fc.bias",
        "visual.trunk.transformer.resblocks.0.mlp.c_proj.weight",
        "visual.trunk.transformer.resblocks.0.mlp.c_proj.bias",
        "visual.trunk.transformer.resblocks.0.ln_2.weight",
        "visual.trunk.transformer.resblocks.0.ln_2.bias",
        "visual.trunk.ln_post.weight",
        "visual.trunk.ln_post.bias",
        "visual.projection.weight",
        "visual.trunk.class_embedding",
    }
    assert set(content["vector"]) == expected
    for name, tensor in zip(names, tensors):
        mapped = content["vector"][mammoth_parameter_name(name)]
        assert torch.equal(mapped, tensor) and not mapped.requires_grad
    vector = LinearTaskVector(content["vector"])  # what TaskVector.load would build from the content
    assert len(vector) == len(names)
    # the kind: from the args json, which must agree with the run's tangent when both are known
    with pytest.raises(ValueError, match="tangent=1"):
        read_mammoth_task_vector(path, tangent=False)


def test_reference_file_without_args_needs_tangent_and_keeps_unknown_names_out(tmp_path):
    names = ["conv1.weight", "logit_scale", "lin_proj.weight"]
    tensors = [torch.ones(2, 2), torch.ones(1), torch.full((2, 3), 2.0)]
    path = _write_reference_files(tmp_path, "0_seq-x", 0, tensors, names)
    with pytest.raises(ValueError, match="pass tangent"):
        read_mammoth_task_vector(path)
    content = read_mammoth_task_vector(path, tangent=False)
    assert content["kind"] == "standard" and content["task"] == 1
    assert content["unmapped"] == ["logit_scale"]
    assert set(content["vector"]) == {"visual.trunk.conv1.weight", "visual.projection.weight"}
    assert TaskVector(content["vector"]).kind == "standard"
    # restricted to a run's parameters: an unmapped entry that is not zero is refused
    with pytest.raises(ValueError, match="does not fine-tune"):
        read_mammoth_task_vector(path, tangent=False, parameters=["visual.trunk.conv1.weight"])


def test_reference_lora_pair_and_missing_names(tmp_path):
    up, down = torch.randn(4, 2), torch.randn(2, 3)
    torch.save([[up, down]], tmp_path / "1_d_task_0.pt")
    torch.save(
        {"delta_w_names": ["transformer.resblocks.0.mlp.c_fc.weight"]}, tmp_path / "1_d_task_0_meta.pt"
    )
    content = read_mammoth_task_vector(tmp_path / "1_d_task_0.pt", tangent=True)
    torch.testing.assert_close(
        content["vector"]["visual.trunk.transformer.resblocks.0.mlp.c_fc.weight"], up @ down
    )
    torch.save([torch.ones(2)], tmp_path / "1_d_task_1.pt")
    with pytest.raises(FileNotFoundError, match="_meta.pt"):
        read_mammoth_task_vector(tmp_path / "1_d_task_1.pt", tangent=True)


def test_reference_file_fits_a_clcore_clip_run(tmp_path):
    pytest.importorskip("open_clip")
    from clcore.algorithms.tak.clip_kfac_ready import make_kfac_ready
    from clcore.algorithms.tak.parameters import KINDS, select_parameters
    from clcore.backbones.clip import CLIPVisualBackbone

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    backbone = make_kfac_ready(
        CLIPVisualBackbone("clcore-test-merging-conventions-vit", pretrained=None, model_cfg=cfg)
    )
    every_kind = select_parameters(
        backbone, dict.fromkeys(KINDS, True), projection_scaler=0.1, norm_scaler=10.0
    ).shapes
    names = _reference_names(2)
    assert {mammoth_parameter_name(name) for name in names} == set(every_kind)  # the naming maps 1:1
    # the reference's defaults: positional embedding and conv stem not fine-tuned (zeros in its file)
    tensors = [
        torch.zeros(every_kind[mammoth_parameter_name(name)])
        if name in ("positional_embedding", "conv1.weight")
        else torch.randn(every_kind[mammoth_parameter_name(name)])
        for name in names
    ]
    path = _write_reference_files(tmp_path, "3_seq-d", 0, tensors, names, {"tangent": 1})
    run = select_parameters(
        backbone,
        {kind: kind not in ("positional_embedding", "conv_stem") for kind in KINDS},
        projection_scaler=0.1,
        norm_scaler=10.0,
    ).shapes
    content = read_mammoth_task_vector(path, tangent=True, parameters=run)
    assert set(content["vector"]) == set(run)
    for name, tensor in zip(names, tensors):
        if mammoth_parameter_name(name) in run:
            assert torch.equal(content["vector"][mammoth_parameter_name(name)], tensor)
    # a run that does not fine-tune the layer norms: the file's (non-zero) ones are refused
    no_norms = {name: shape for name, shape in run.items() if ".ln_" not in name}
    with pytest.raises(ValueError, match="does not fine-tune"):
        read_mammoth_task_vector(path, tangent=True, parameters=no_norms)
