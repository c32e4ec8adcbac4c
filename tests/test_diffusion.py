"""The DiffGAP translator: sampler, training (Algorithm 1), checkpoints, reranking signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

from diffgap_search.diffusion.network import NetworkConfig
from diffgap_search.diffusion.train import TrainConfig, both_directions_trained, direction_at, direction_steps, train
from diffgap_search.diffusion.translator import Sampling, Translator
from diffgap_search.errors import DiffgapError
from diffgap_search.pairs import read_pairs, write_pairs
from diffgap_search.synthetic import GapConfig, make_pairs

TINY = NetworkConfig(hidden=32, emb=32, blocks=2)


def tiny_config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, interval=7, network=TINY, checkpoint_every=10, val_queries=50, val_steps=2)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    p = make_pairs(600, GapConfig(dim_a=24, dim_b=16), seed=1)
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.parquet", p.a, p.b)


@pytest.fixture(scope="module")
def trained(pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    return out, train(pairs_file, out, tiny_config(), progress=False, log=lambda s: None)


def randomized(translator: Translator, seed: int = 0) -> Translator:
    """Give the zero-initialized output layers random values, so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in translator.network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return translator


# -- sampler --------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_sampling_loop_equals_diffusers_ddim_steps(trained, eta, prediction_type):
    """Our translate() == noise -> DDIMScheduler.step x S on the guided output, by hand."""
    from dataclasses import replace

    out, _ = trained
    tr = randomized(Translator.load(out))
    tr.config.schedule = replace(tr.config.schedule, prediction_type=prediction_type)
    q = torch.from_numpy(make_pairs(5, GapConfig(dim_a=24, dim_b=16), seed=9).b)
    steps, w = 3, 2.5
    ours = tr.translate(q, "to-audio", steps=steps, samples=1, guidance=w, eta=eta, generator=torch.Generator().manual_seed(4))

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True,
                          timestep_spacing="trailing")
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == [999, 666, 332]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 24, generator=g)
    cond = tr.norms[1](q)
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((5,), int(t))
            c = tr.network(x, tt, cond, 0)
            u = tr.network(x, tt, None, 0)
            noise = torch.randn(5, 24, generator=g) if eta > 0 else None
            x = sched.step(u + w * (c - u), t, x, eta=eta, variance_noise=noise).prev_sample
    expected = torch.nn.functional.normalize(x * tr.norms[0].std + tr.norms[0].mean, dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_guidance_one_is_conditional_and_zero_ignores_the_condition(trained):
    tr = randomized(Translator.load(trained[0]))
    x, t = torch.randn(4, 24), torch.tensor([10, 200, 500, 900])
    cond = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(tr.guided_output(x, t, cond, 0, 1.0), tr.network(x, t, cond, 0))
        a = tr.guided_output(x, t, cond, 0, 0.0)
        b = tr.guided_output(x, t, torch.randn(4, 16), 0, 0.0)
        assert torch.equal(a, b)
        keep_none = tr.network(x, t, cond, 0, keep=torch.zeros(4, dtype=torch.bool))
        assert torch.allclose(keep_none, a, atol=1e-6)


def test_translations_are_unit_norm_and_samples_average(trained):
    tr = trained[1]
    q = make_pairs(8, GapConfig(dim_a=24, dim_b=16), seed=5).b
    one = tr.translate(q, steps=4, samples=1, generator=torch.Generator().manual_seed(0))
    four = tr.translate(q, steps=4, samples=4, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.linalg.norm(four, axis=1), 1, atol=1e-5)
    assert one.shape == four.shape == (8, 24)
    back = tr.translate(one, "from-audio", steps=2)
    assert back.shape == (8, 16)


def test_start_step_needs_equal_dims_and_small_start_stays_close(tmp_path):
    p = make_pairs(300, GapConfig(dim_a=16, dim_b=16), seed=2)
    path = write_pairs(tmp_path / "p.parquet", p.a, p.b)
    tr = train(path, tmp_path / "m", tiny_config(epochs=1), progress=False, log=lambda s: None)
    tr = randomized(tr, seed=5)
    x = torch.from_numpy(p.b[:6])
    ours = tr.translate(x, start_step=400, steps=5, samples=1, guidance=1.0, generator=torch.Generator().manual_seed(0))
    # by hand: noise the source (in the target space's normalization) to t=399, then DDIM 399 -> 199 -> clean
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          prediction_type=tr.config.schedule.prediction_type, clip_sample=False,
                          set_alpha_to_one=True, timestep_spacing="trailing")
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    cond = tr.norms[1](x)
    with torch.no_grad():
        sample = sched.add_noise(tr.norms[0](x), torch.randn(6, 16, generator=g), torch.full((6,), 399))
        for t in (399, 199):
            sample = sched.step(tr.network(sample, torch.full((6,), t), cond, 0), t, sample).prev_sample
    np.testing.assert_allclose(ours, tr.norms[0].inverse(sample).numpy(), atol=1e-5)
    p2 = make_pairs(300, GapConfig(dim_a=24, dim_b=16), seed=2)
    tr2 = train(write_pairs(tmp_path / "p2.parquet", p2.a, p2.b), tmp_path / "m2", tiny_config(epochs=1),
                progress=False, log=lambda s: None)
    with pytest.raises(DiffgapError, match="start_step needs source and target of one dim"):
        tr2.translate(p2.b[:2], start_step=100)


# -- denoise error ----------------------------------------------------------------------------


def test_denoise_error_equals_a_loop_over_candidates_and_timesteps(trained):
    tr = randomized(Translator.load(trained[0]), seed=3)
    rng = np.random.default_rng(0)
    p = make_pairs(7, GapConfig(dim_a=24, dim_b=16), seed=11)
    queries, candidates = p.b[:3], np.stack([p.a[[0, 1, 2, 3, 4]], p.a[[2, 3, 4, 5, 6]], p.a[[6, 5, 4, 3, 2]]])
    timesteps, noise = np.array([50, 400, 800]), rng.standard_normal((3, 16)).astype(np.float32)
    fast = tr.denoise_error(queries, candidates, timesteps, noise, "from-audio", max_rows=20)  # forces chunks
    sched = tr.train_scheduler
    alphas = sched.alphas_cumprod
    with torch.no_grad():
        for qi in range(3):
            x0 = tr.norms[1](torch.from_numpy(queries[qi : qi + 1]))
            for ni in range(5):
                cond = tr.norms[0](torch.from_numpy(candidates[qi, ni : ni + 1]))
                errs = []
                for t, eps in zip(timesteps, noise):
                    eps = torch.from_numpy(eps)[None]
                    a = alphas[t]
                    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                    pred = tr.network(x_t.float(), torch.tensor([int(t)]), cond, 1)
                    goal = x0 if tr.config.schedule.prediction_type == "sample" else eps
                    errs.append(float(((pred - goal) ** 2).mean()))
                assert fast[qi, ni] == pytest.approx(np.mean(errs), rel=1e-4)
    shared = tr.denoise_error(queries, p.a[:5], timesteps, noise, "from-audio")
    np.testing.assert_allclose(shared[0], fast[0], rtol=1e-5)


# -- Algorithm 1 ------------------------------------------------------------------------------


def test_direction_flips_exactly_at_multiples_of_the_interval(pairs_file, tmp_path):
    seen = []
    train(pairs_file, tmp_path / "m", tiny_config(epochs=5, max_steps=40, interval=7), progress=False,
          on_step=lambda step, d, loss: seen.append((step, d)), log=lambda s: None)
    steps, dirs = zip(*seen)
    assert list(steps) == list(range(40))
    flips = [s for s in range(1, 40) if dirs[s] != dirs[s - 1]]
    assert flips == [7, 14, 21, 28, 35]
    assert dirs[0] == 0 and all(dirs[s] == (s // 7) % 2 for s in steps)
    assert [direction_at(s, 5, bidirectional=False) for s in range(20)] == [0] * 20


def test_no_bidirectional_trains_only_to_audio(pairs_file, tmp_path):
    seen = []
    tr = train(pairs_file, tmp_path / "m", tiny_config(max_steps=20, interval=3, bidirectional=False), progress=False,
               on_step=lambda step, d, loss: seen.append(d), log=lambda s: None)
    assert set(seen) == {0}
    with pytest.raises(DiffgapError, match="no-bidirectional"):
        tr.translate(np.ones((1, 24), np.float32), "from-audio")


def test_direction_steps_counts_algorithm_1_and_both_trained_needs_a_quarter_share():
    for steps, m in [(0, 7), (6, 7), (7, 7), (13, 7), (14, 7), (40, 7), (5160, 5000), (12345, 100)]:
        back = sum(direction_at(s, m) for s in range(steps))
        assert direction_steps(steps, m) == {"to-audio": steps - back, "from-audio": back}
        assert direction_steps(steps, m, bidirectional=False) == {"to-audio": steps, "from-audio": 0}
    # the run: 2 epochs of clotho_dev with m = 5000 gave the from-audio direction 160 of 5,160 steps
    assert direction_steps(5160, 5000) == {"to-audio": 5000, "from-audio": 160}
    assert not both_directions_trained(5160, TrainConfig(interval=5000))
    # from-audio reaches 25% of to-audio's steps at 1.25 m, and never falls below it again
    assert [both_directions_trained(s, TrainConfig(interval=100)) for s in (100, 124, 125, 200, 250, 301, 10_000)] == \
        [False, False, True, True, True, True, True]
    assert not both_directions_trained(10_000, TrainConfig(interval=100, bidirectional=False))  # one direction only


@pytest.mark.parametrize("val_every, steps", [(0, [18, 36, 54, 72]),
                                              (10, [10, 18, 20, 30, 36, 40, 50, 54, 60, 70, 72])])
def test_keep_best_only_keeps_steps_where_both_directions_trained(pairs_file, tmp_path, val_every, steps):
    # 570 training pairs, batch 32: 18 steps per epoch; the first flip is at step 30 and the from-audio direction
    # has a quarter of the to-audio one's 30 steps at step 38, so a validation at step <= 37 has an under-trained
    # from-audio direction and may not be kept once a later one exists. Validations: every epoch's end, and every
    # val_every steps.
    train(pairs_file, tmp_path / "m", tiny_config(epochs=4, interval=30, val_every=val_every), progress=False,
          log=lambda s: None)
    log = [json.loads(line) for line in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == steps
    assert [r["both_directions_trained"] for r in log] == [s >= 38 for s in steps]
    assert [r["epoch"] for r in log] == [(s - 1) // 18 + 1 for s in steps]
    expected = max(log, key=lambda r: (r["both_directions_trained"], r["val_R@1"], -r["val_loss_to-audio"]))
    kept = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    assert kept["epoch"]["step"] == kept["steps"] == expected["step"] and kept["steps"] >= 38
    assert kept["direction_steps"] == {"to-audio": kept["steps"] - min(30, kept["steps"] - 30), "from-audio": min(30, kept["steps"] - 30)}


def test_a_run_too_short_for_the_reverse_direction_is_flagged(pairs_file, tmp_path):
    """The flag in log.csv and the translator's direction counts tell an under-trained direction (issue 13)."""
    lines = []
    tr = train(pairs_file, tmp_path / "m", tiny_config(epochs=1, interval=15), progress=False, log=lines.append)  # 18 steps
    assert any("warning: the direction flips every 15 steps and this run has 18" in line for line in lines)
    log = [json.loads(line) for line in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["both_directions_trained"]) for r in log] == [(18, False)]
    assert tr.direction_steps == {"to-audio": 15, "from-audio": 3}
    assert tr.undertrained("to-audio") is None
    reason = tr.undertrained("from-audio")
    assert reason.startswith("its from-audio direction trained 3 of 18 steps") and "--interval" in reason
    assert "\n" not in reason
    assert Translator.load(tmp_path / "m").undertrained(1) == reason

    enough = train(pairs_file, tmp_path / "ok", tiny_config(epochs=1, interval=5), progress=False, log=lambda s: None)
    assert enough.direction_steps == {"to-audio": 10, "from-audio": 8}
    assert enough.undertrained("to-audio") is None and enough.undertrained("from-audio") is None
    one_way = train(pairs_file, tmp_path / "one", tiny_config(max_steps=5, bidirectional=False), progress=False, log=lambda s: None)
    assert one_way.direction_steps == {"to-audio": 5, "from-audio": 0}
    assert "no-bidirectional" in one_way.undertrained("from-audio") and one_way.undertrained("to-audio") is None


def test_checkpoints_without_the_new_sections_still_say_what_they_can(trained, tmp_path):
    """Translators written before `sampling` and `direction_steps` existed: both are recovered from the training section."""
    import shutil

    out, tr = trained
    assert tr.sampling == Sampling(2, 4, 4.0)  # tiny_config: val_steps 2, TrainConfig's val_samples 4, val_guidance 4
    old = tmp_path / "old"
    shutil.copytree(out, old)
    raw = json.loads((old / "config.json").read_text())
    del raw["sampling"], raw["training"]["direction_steps"]
    (old / "config.json").write_text(json.dumps(raw))
    again = Translator.load(old)
    assert again.sampling == tr.sampling and again.direction_steps == tr.direction_steps
    for key in ("val_samples", "steps"):
        del raw["training"][key]
    (old / "config.json").write_text(json.dumps(raw))
    bare = Translator.load(old)
    assert bare.sampling == Sampling() == Sampling(5, 4, 4.0) and bare.direction_steps is None and bare.undertrained(1) is None
    raw["sampling"] = {"steps": 0, "samples": 1, "guidance": 1.0}
    (old / "config.json").write_text(json.dumps(raw))
    with pytest.raises(DiffgapError, match=r"config.json: malformed translator config .*sampling.steps = 0"):
        Translator.load(old)


def test_translate_defaults_to_the_sampling_validation_used(trained):
    """S, K, w not given are the ones train validated at, which config.json stores."""
    out, tr = trained
    stored = json.loads((out / "config.json").read_text())["sampling"]
    assert stored == {"steps": 2, "samples": 4, "guidance": 4.0}
    q = make_pairs(6, GapConfig(dim_a=24, dim_b=16), seed=3).b
    default = tr.translate(q, generator=torch.Generator().manual_seed(1))
    explicit = tr.translate(q, steps=2, samples=4, guidance=4.0, generator=torch.Generator().manual_seed(1))
    plain = tr.translate(q, steps=2, samples=1, guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(default, explicit) and not np.allclose(default, plain)
    assert np.array_equal(tr.translate(q, samples=1, generator=torch.Generator().manual_seed(1)),
                          tr.translate(q, steps=2, samples=1, guidance=4.0, generator=torch.Generator().manual_seed(1)))


def test_pairs_without_training_rows_are_refused_up_front(tmp_path):
    p = make_pairs(40, GapConfig(dim_a=8, dim_b=6), seed=0)
    only_val = write_pairs(tmp_path / "val.parquet", p.a, p.b, split=["val"] * 30 + ["test"] * 10)
    with pytest.raises(DiffgapError) as err:
        train(only_val, tmp_path / "m", tiny_config(), progress=False, log=lambda s: None)
    assert str(err.value) == (f"{only_val}: no training rows (split counts: test 10, val 30); train on pairs with "
                              "split == 'train' rows (prepare --split train) or without a split column")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("samples, guidance", [(1, 1.0), (4, 4.0)])
def test_logged_validation_r1_is_the_kept_translator_at_the_validation_settings(pairs_file, tmp_path, samples, guidance):
    from diffgap_search.metrics import recall_at, target_ranks
    from diffgap_search.pairs import split_train_val

    config = tiny_config(epochs=3, interval=10, val_samples=samples, val_guidance=guidance, val_queries=40)
    translator = train(pairs_file, tmp_path / "m", config, progress=False, log=lambda s: None)
    kept = translator.config.training["epoch"]
    _, val = split_train_val(read_pairs(pairs_file), config.val_fraction, config.seed)
    gallery, target = val.gallery()
    x = translator.translate(val.b[:40], "to-audio", steps=config.val_steps, samples=samples, guidance=guidance,
                             generator=torch.Generator().manual_seed(config.seed + 2))
    assert kept["val_R@1"] == recall_at(target_ranks(x, gallery, target[:40]))["R@1"]


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_step_loss_is_mse_plus_infonce_on_the_clean_estimate(prediction_type):
    from diffusers import DDPMScheduler

    from diffgap_search.diffusion.loss import clean_estimate, step_loss

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x0, noise, pred = (torch.randn(6, 5, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    keep = torch.tensor([True, True, False, True, True, False])
    x_t = sched.add_noise(x0, noise, t)
    # the clean estimate equals the one diffusers' own DDPM step derives, row by row
    for i in range(6):
        ref = sched.step(pred[i : i + 1], int(t[i]), x_t[i : i + 1], generator=g).pred_original_sample
        torch.testing.assert_close(clean_estimate(sched, pred[i : i + 1], x_t[i : i + 1], t[i : i + 1]), ref, rtol=1e-4, atol=1e-5)
    target = {"sample": x0, "epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t)}[prediction_type]
    mse = ((pred - target) ** 2).mean()
    assert torch.allclose(step_loss(sched, pred, x0, x_t, noise, t, keep, 0.0), mse)
    # InfoNCE by hand over the kept rows: -log softmax_j(cos(x0_hat_i, x0_j) / tau)[i]
    x0_hat = clean_estimate(sched, pred, x_t, t).double().numpy()
    ref_x0 = x0.double().numpy()
    cos = (x0_hat / np.linalg.norm(x0_hat, axis=1, keepdims=True)) @ (ref_x0 / np.linalg.norm(ref_x0, axis=1, keepdims=True)).T / 0.1
    rows = np.flatnonzero(keep.numpy())
    ce = np.mean([np.log(np.exp(cos[i]).sum()) - cos[i, i] for i in rows])
    got = step_loss(sched, pred, x0, x_t, noise, t, keep, 0.5, 0.1)
    assert abs(float(got) - (float(mse) + 0.5 * ce)) < 1e-4


def test_infonce_leaves_other_captions_of_the_same_clip_out_of_the_softmax():
    from diffgap_search.diffusion.loss import info_nce

    g = torch.Generator().manual_seed(1)
    x0_hat, x0 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    x0[3] = x0[1]  # rows 1 and 3: two captions of one clip drew its audio twice
    groups = torch.tensor([0, 1, 2, 1, 3, 4])
    keep = torch.tensor([True, True, True, True, False, True])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    logits = unit(x0_hat.double().numpy()) @ unit(x0.double().numpy()).T / 0.2
    rows = (0, 1, 2, 3, 5)
    # by hand: row i's softmax runs over its own target and every target of another clip
    ce = [np.log(np.exp(logits[i, [i] + [j for j in range(6) if groups[j] != groups[i]]]).sum()) - logits[i, i] for i in rows]
    assert abs(float(info_nce(x0_hat, x0, keep, 0.2, groups)) - np.mean(ce)) < 1e-5
    # without groups every other target is a negative
    plain = [np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in rows]
    assert abs(float(info_nce(x0_hat, x0, keep, 0.2)) - np.mean(plain)) < 1e-5
    assert np.mean(plain) > np.mean(ce) + 1e-3


def test_seeded_training_reproduces(pairs_file, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(pairs_file, tmp_path / name, tiny_config(max_steps=25, seed=seed), progress=False, log=lambda s: None)
    a, b, c = (load_file(str(tmp_path / n / "model.safetensors")) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loss_falls_on_synthetic_pairs(tmp_path):
    p = make_pairs(4000, GapConfig(dim_a=32, dim_b=32), seed=0)
    path = write_pairs(tmp_path / "p.parquet", p.a, p.b)
    # the paper's loss alone (no contrastive term), so train_loss is the denoising MSE
    cfg = tiny_config(epochs=4, batch_size=64, interval=100000, network=NetworkConfig(hidden=64, emb=64, blocks=2),
                      val_queries=200, val_steps=5, contrastive_weight=0.0)
    train(path, tmp_path / "m", cfg, progress=False, log=lambda s: None)
    log = [json.loads(line) for line in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4
    assert log[-1]["train_loss"] < 0.85 * log[0]["train_loss"]
    assert log[-1]["val_loss_to-audio"] < log[0]["val_loss_to-audio"]
    # and the translation finds its targets well above chance (1/200 in a 200-way validation)
    assert log[-1]["val_gallery"] == 200
    assert log[-1]["val_R@1"] >= 4 / 200
    assert log[-1]["val_R@1"] > log[0]["val_R@1"]


def test_resume_continues_the_same_run(pairs_file, tmp_path):
    straight = tmp_path / "straight"
    kw = dict(checkpoint_every=5)
    train(pairs_file, straight, tiny_config(max_steps=33, **kw), progress=False, log=lambda s: None)
    part = tmp_path / "part"
    train(pairs_file, part, tiny_config(max_steps=12, **kw), progress=False, log=lambda s: None)
    with pytest.raises(DiffgapError, match="--resume"):
        train(pairs_file, part, tiny_config(max_steps=33, **kw), progress=False, log=lambda s: None)
    with pytest.raises(DiffgapError, match="lr"):
        train(pairs_file, part, tiny_config(max_steps=33, lr=1e-3, **kw), resume=True, progress=False, log=lambda s: None)
    train(pairs_file, part, tiny_config(max_steps=33, **kw), resume=True, progress=False, log=lambda s: None)
    a, b = load_file(str(straight / "training_state.safetensors")), load_file(str(part / "training_state.safetensors"))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


# -- checkpoints ------------------------------------------------------------------------------


def test_save_load_gives_bit_identical_translations(trained, tmp_path):
    out, tr = trained
    again = Translator.load(out)
    q = make_pairs(10, GapConfig(dim_a=24, dim_b=16), seed=7).b
    kw = dict(steps=5, samples=2, guidance=1.5, eta=0.3)
    x1 = tr.translate(q, generator=torch.Generator().manual_seed(123), **kw)
    x2 = again.translate(q, generator=torch.Generator().manual_seed(123), **kw)
    assert np.array_equal(x1, x2)
    assert tr.parameter_count == again.parameter_count
    copy = again.save(tmp_path / "copy")
    x3 = Translator.load(copy).translate(q, generator=torch.Generator().manual_seed(123), **kw)
    assert np.array_equal(x1, x3)


def test_bad_checkpoints_give_clear_errors(trained, tmp_path):
    import shutil

    out, tr = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    config = json.loads((bad / "config.json").read_text())
    config["format_version"] = 99
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(DiffgapError, match="format version 99 is not supported"):
        Translator.load(bad)
    shutil.copy(out / "config.json", bad / "config.json")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DiffgapError, match="unreadable weights"):
        Translator.load(bad)
    tensors = load_file(str(out / "model.safetensors"))
    tensors["ema.in_proj.0.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(DiffgapError, match="ema.in_proj.0.weight|in_proj.0.weight"):
        Translator.load(bad)
    with pytest.raises(DiffgapError, match="missing"):
        Translator.load(tmp_path / "nowhere")
    with pytest.raises(DiffgapError, match="dim 20, the translator expects 16"):
        tr.translate(np.ones((2, 20), np.float32))


class _Trap:
    """Unpickling this would create a file: proof that a loader executed code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_never_unpickles(trained, tmp_path):
    """A torch.save pickle in place of the weights is refused, and its code never runs."""
    import shutil

    out, _ = trained
    bad = tmp_path / "pickled"
    shutil.copytree(out, bad)
    marker = tmp_path / "code-ran"
    torch.save({"ema.x": _Trap(marker)}, bad / "model.safetensors")
    with pytest.raises(DiffgapError, match="unreadable weights"):
        Translator.load(bad)
    assert not marker.exists()


def test_pairs_validation_names_the_column(tmp_path):
    import pyarrow.parquet as pq

    p = make_pairs(20, GapConfig(dim_a=8, dim_b=6), seed=0)
    good = write_pairs(tmp_path / "good.parquet", p.a, p.b, group_id=np.arange(20) // 2)
    pairs = read_pairs(good)
    assert (pairs.dim_a, pairs.dim_b, len(pairs), int(pairs.group.max()) + 1) == (8, 6, 20, 10)
    gallery, target = pairs.gallery()
    np.testing.assert_array_equal(gallery, p.a[::2])
    table = pq.read_table(good)
    pq.write_table(table.drop(["b"]), tmp_path / "no_b.parquet")
    with pytest.raises(DiffgapError, match="missing column 'b'"):
        read_pairs(tmp_path / "no_b.parquet")
    nan_b = p.b.copy()
    nan_b[4, 2] = np.nan
    write_pairs(tmp_path / "nan.parquet", p.a, nan_b)
    with pytest.raises(DiffgapError, match=r"column 'b'.*row 4"):
        read_pairs(tmp_path / "nan.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(DiffgapError, match="no pairs"):
        read_pairs(tmp_path / "empty.parquet")
    with pytest.raises(DiffgapError, match="dim"):
        read_pairs(good, dim_a=9)
