"""End-to-end tests of train.py and sample.py: tiny configs, a handful of steps, CPU only."""
import dataclasses
import functools
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sample
import train

REPO = Path(__file__).resolve().parent.parent
# 16 tokens of 8x8 pixels and a few hundred images: every run below takes seconds.
TINY = ["--model", "tiny", "--patch_size", "8", "--num_images", "256", "--batch_size", "16", "--warmup", "2",
        "--log_every", "2", "--sample_every", "1000", "--sample_steps", "2", "--max_text_length", "48"]


def run(tmp_path: Path, *args: str) -> Path:
    return train.main(TINY + ["--out_dir", str(tmp_path), *args])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors") | {f"ema.{k}": v for k, v in load_file(path / "ema.safetensors").items()}


def test_train_writes_run_and_sample_writes_pngs(tmp_path):
    run_dir = run(tmp_path, "--name", "a", "--steps", "4", "--ckpt_every", "2", "--keep_ckpts", "1", "--eval_every", "4")
    assert json.loads((run_dir / "config.json").read_text())["patch_size"] == 8
    assert [p.name for p in train.checkpoints(run_dir)] == ["step_0000004"]       # older ones pruned
    assert (run_dir / "samples" / "step_0000004.png").is_file()
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2, 4] and log[-1]["event"] == "done"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    assert log[-2]["heldout_loss"] > 0 and log[-2]["train_loss"] > 0 and "heldout_loss" not in log[0]

    out = sample.main(["--ckpt", str(run_dir), "--images-per-prompt", "2", "--steps", "2", "--out",
                       str(tmp_path / "png"), "a red star to the left of a blue circle", "a small green heart"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 5 and "grid.png" in pngs and pngs[0].startswith("0000_a_red_star")


def test_generate_is_deterministic_and_batch_independent(tmp_path):
    run_dir = run(tmp_path, "--name", "g", "--steps", "2")
    pipe = sample.load_pipeline(str(run_dir))
    assert pipe.model.dit.prediction == "x" and pipe.model.dit.patch_size == 8      # the run's network, rebuilt
    prompts = ["a red star", "a blue circle", "a yellow square"]
    a = sample.generate(pipe, prompts, seed=3, steps=3, batch_size=3, progress=False)
    b = sample.generate(pipe, prompts, seed=3, steps=3, batch_size=1, progress=False)
    assert a.shape == (3, 32, 32, 3) and a.dtype.name == "uint8"
    assert abs(a.astype(int) - b.astype(int)).max() <= 1                          # batching changes nothing
    assert not (sample.generate(pipe, prompts, seed=4, steps=3, progress=False) == a).all()


def logged(run_dir: Path) -> list[int]:
    """The step of every training log record, then the final event's."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r or r.get("event") == "done"]


def test_resume_continues_exactly(tmp_path):
    full = run(tmp_path, "--name", "full", "--steps", "6", "--ckpt_every", "3", "--cutmix", "all", "--crop")
    # Simulate a crash after step 3: drop the last checkpoint (the log keeps the lines after it), then resume.
    broken = tmp_path / "broken"
    shutil.copytree(full, broken)
    shutil.rmtree(broken / "checkpoints" / "step_0000006")
    resumed = run(tmp_path, "--name", "broken", "--resume")
    a, b = weights(full / "checkpoints" / "step_0000006"), weights(resumed / "checkpoints" / "step_0000006")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    assert logged(resumed) == logged(full)                     # the lines after step 3 are replaced, not repeated


def test_resume_with_more_steps_records_them_and_a_new_run_never_reuses_a_folder(tmp_path):
    run_dir = run(tmp_path, "--name", "more", "--steps", "2", "--lr_schedule", "constant")
    run(tmp_path, "--name", "more", "--resume", "--steps", "4")
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 4
    assert logged(run_dir)[-1] == 4 and [p.name for p in train.checkpoints(run_dir)][-1] == "step_0000004"
    with pytest.raises(SystemExit, match="already holds a run"):
        run(tmp_path, "--name", "more", "--steps", "2")


def test_epoch_batches_deal_disjoint_shards_and_resume_mid_epoch():
    def batches(rank: int, count: int, start: int = 0) -> list[list[tuple[int, int]]]:
        return list(itertools.islice(iter(train.EpochBatches(50, 4, rank, 2, seed=0, start=start)), count))
    per_epoch = (50 // 2) // 4                                               # 6 full micro-batches per rank
    shards = [{i for b in batches(rank, per_epoch) for _, i in b} for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 24 and not shards[0] & shards[1]
    stream = batches(0, 9)
    assert {e for b in stream for e, _ in b} == {0, 1}                        # the 7th micro-batch opens epoch 1
    assert batches(0, 4, start=5) == stream[5:9]                               # a resumed sampler skips ahead


def test_resume_rejects_a_different_config(tmp_path):
    run(tmp_path, "--name", "r", "--steps", "2")
    with pytest.raises(SystemExit, match="--patch_size: checkpoint has 8, asked 4"):
        run(tmp_path, "--name", "r", "--resume", "--patch_size", "4")
    with pytest.raises(SystemExit, match="no run at"):
        run(tmp_path, "--name", "missing", "--resume")


def test_weights_of_another_model_version_are_named_not_dumped(tmp_path):
    run_dir = run(tmp_path, "--name", "old", "--steps", "2")
    for weights in (run_dir / "checkpoints" / "step_0000002").glob("*.safetensors"):
        tensors = load_file(weights)
        tensors["text_encoder.pos_embed"] = torch.zeros(1, 64, 128)          # the table an older version had
        tensors["text_encoder.embed.weight"] = tensors.pop("text_encoder.token_embed.weight")       # a rename
        save_file(tensors, weights)
    with pytest.raises(SystemExit, match=r"--resume: .*model\.safetensors does not fit this version of model\.py "
                                         r"\(missing: text_encoder\.token_embed\.weight; unexpected: "
                                         r"text_encoder\.embed\.weight, text_encoder\.pos_embed\)"):
        run(tmp_path, "--name", "old", "--resume", "--steps", "4")
    with pytest.raises(ValueError, match=r"ema\.safetensors does not fit"):
        sample.load_pipeline(str(run_dir))


def test_bad_flags_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "huge"])
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and "'tiny'" in err
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "tpu"])
    with pytest.raises(SystemExit):
        train.parse_args(["--objects", "huge"])
    assert "'varied', 'centered', 'large'" in capsys.readouterr().err
    cfg = train.parse_args(["--objects", "centered", "--num_images", "8"])[0]                # reaches the data
    objs = [s.objects[0] for s in train.build_dataset(cfg).base.scenes]
    assert all(o.size >= 0.2 and abs(o.x - 0.5) <= 0.08 and abs(o.y - 0.5) <= 0.08 for o in objs)
    assert train.parse_args([])[0].objects == "large"                                       # the cpu preset's
    for flag, value in (("--grad_accum", "0"), ("--log_every", "0"), ("--keep_ckpts", "0")):
        with pytest.raises(SystemExit):
            train.parse_args([flag, value])
        assert f"{flag} must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--device", "gpu"])
    assert "--device: expected" in capsys.readouterr().err
    for value in ("0", "1.5"):
        with pytest.raises(SystemExit):
            train.parse_args(["--lr_schedule", "wsd", "--cooldown", value])
        assert f"expected 0 < cooldown <= 1, got {float(value)}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--early_steps", "-1"])
    assert "--early_steps counts steps: expected 0 or more, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--head_channels", "-1"])
    assert "--head_channels: expected 0 (DiT's linear head) or more, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", "runs/does-not-exist", "a red star"])
    assert "runs/does-not-exist" in capsys.readouterr().err
    for flag, value, expected in (("--steps", "0", "a positive integer"), ("--shift", "0", "a positive number"),
                                  ("--guidance", "-1", "a non-negative number")):
        with pytest.raises(SystemExit):
            sample.main(["--ckpt", "runs/does-not-exist", flag, value, "a red star"])
        assert f"argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", "runs/does-not-exist", "--guidance-interval", "0", "2", "a red star"])
    assert "argument --guidance-interval: expected a number in [0, 1], got '2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", "runs/does-not-exist", "--guidance-interval", "0.8", "0.2", "a red star"])
    assert "--guidance-interval: LO must not exceed HI, got 0.8 0.2" in capsys.readouterr().err


def test_sample_passes_the_guidance_interval_to_the_sampler(tmp_path, monkeypatch):
    run_dir = run(tmp_path, "--name", "gi", "--steps", "1")
    seen, real_sample = [], sample.sample

    def spy(*args, **kwargs):
        seen.append(kwargs["guidance_interval"])
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(sample, "sample", spy)
    sample.main(["--ckpt", str(run_dir), "--steps", "2", "--guidance-interval", "0.3", "1", "--images-per-prompt", "1",
                 "--out", str(tmp_path / "png"), "a red star"])
    assert seen == [(0.3, 1.0)]


def test_sample_prompt_file_errors(tmp_path, capsys):
    run_dir = run(tmp_path, "--name", "p", "--steps", "1")
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", str(run_dir), "--prompts", str(tmp_path / "nope.txt")])
    assert "nope.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", str(run_dir), "--prompts", str(tmp_path / "empty.txt")])
    assert "empty.txt" in capsys.readouterr().err


def test_ia_rule_selects_mixed_samples_only_at_high_noise():
    cfg = train.Config()
    gen = train.step_generator(cfg.seed, 0, 0, 0)
    t = train.sample_t(4096, m=cfg.t_mean, generator=gen)
    use = train.mix_mask(t, cfg.t_mix, cfg.p_mix, generator=gen)
    assert not use[t <= cfg.t_mix].any() and 0.2 < use.float().mean() < 0.36


def test_training_times_follow_t_mean_and_the_early_steps():
    n, image = 4096, torch.zeros(4096, 3, 4, 4)
    batch = {"caption": ["a"] * n, "mixed_caption": ["b"] * n, "image": image, "mixed_image": image}

    def median_t(step: int, **changes) -> float:
        cfg = dataclasses.replace(train.Config(), **changes)
        _, t, _ = train.training_batch(batch, cfg, step, train.step_generator(cfg.seed, 0, step, 0))
        return t.median().item()

    def sigmoid(m: float) -> float:                                                   # the median of t
        return 1 / (1 + math.exp(-m))

    assert abs(median_t(0, t_mean=0.0) - 0.5) < 0.02 and abs(median_t(0, t_mean=1.0) - sigmoid(1.0)) < 0.02
    early = dict(t_mean=1.0, early_steps=10, early_t_mean=3.0)
    assert abs(median_t(0, **early) - sigmoid(3.0)) < 0.01 and abs(median_t(9, **early) - sigmoid(3.0)) < 0.01
    assert abs(median_t(10, **early) - sigmoid(1.0)) < 0.02                           # then the run's own t_mean


def test_frozen_hugging_face_text_encoder_trains_and_samples(tmp_path):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
    path = tmp_path / "tiny-t5"
    config = T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2)
    T5EncoderModel(config).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    run_dir = run(tmp_path, "--name", "hf", "--steps", "2", "--text_encoder", str(path))
    assert not (run_dir / "vocab.json").exists()
    state = load_file(run_dir / "checkpoints" / "step_0000002" / "model.safetensors")
    assert not any(k.startswith("text_encoder.") for k in state)                  # frozen: not in the checkpoint
    pipe = sample.load_pipeline(str(run_dir))
    assert sample.generate(pipe, ["a red star"], steps=2, progress=False).shape == (1, 32, 32, 3)


def test_torchrun_two_ranks_gloo_stay_in_sync(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train.py"),
           *TINY, "--out_dir", str(tmp_path), "--name", "ddp", "--steps", "3", "--grad_accum", "2"]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    (tmp_path / "torchrun.log").write_text(proc.stdout)             # both ranks and the agent, interleaved
    assert proc.returncode == 0, f"exit {proc.returncode}, log {tmp_path / 'torchrun.log'}:\n{proc.stdout[-6000:]}"
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "done" and log[-1]["ranks_in_sync"] is True, (log[-1], proc.stdout[-3000:])
    assert (tmp_path / "ddp" / "checkpoints" / "step_0000003" / "ema.safetensors").is_file()


def test_gpu_settings_on_the_cpu_bf16_autocast_and_compile(tmp_path, monkeypatch):
    # What the gpu preset adds to the loop, run where CI can: bf16 autocast, and torch.compile in one graph
    # (fullgraph: a graph break, e.g. a host sync in the text path, is an error). The aot_eager backend traces
    # like inductor but needs no C++ compiler; padding every caption to max_text_length must change nothing.
    def losses(run_dir):
        return [r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]

    plain = run(tmp_path, "--name", "plain", "--steps", "4")
    bf16 = run(tmp_path, "--name", "bf16", "--steps", "4", "--dtype", "bfloat16")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager", fullgraph=True))
    compiled = run(tmp_path, "--name", "compiled", "--steps", "4", "--compile")
    reference = weights(train.checkpoints(plain)[-1])
    for k, v in weights(train.checkpoints(compiled)[-1]).items():
        assert torch.allclose(v, reference[k], atol=1e-5), k
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights(train.checkpoints(bf16)[-1]).values())
    assert losses(bf16) == pytest.approx(losses(plain), rel=0.01)


def test_learning_rate_schedules():
    cfg = train.Config(lr=1.0, min_lr=0.0, warmup=10, steps=110, cooldown=0.5)
    lrs = {name: [train.learning_rate(step, dataclasses.replace(cfg, lr_schedule=name)) for step in range(110)]
           for name in ("constant", "cosine", "wsd")}
    for values in lrs.values():
        assert values[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])      # the same linear warmup
    assert lrs["constant"][10:] == [1.0] * 100
    assert lrs["cosine"][10] == 1.0 and lrs["cosine"][60] == pytest.approx(0.5) and lrs["cosine"][-1] < 1e-3
    assert train.decay_start(dataclasses.replace(cfg, lr_schedule="wsd")) == 55
    assert lrs["wsd"][10:56] == [1.0] * 46 and lrs["wsd"][55 + 27] == pytest.approx(0.5, abs=0.03)
    assert all(a > b for a, b in zip(lrs["wsd"][55:], lrs["wsd"][56:])) and lrs["wsd"][-1] < 1e-2


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_time_budget_run_equals_the_fixed_step_run_it_resolves_to(tmp_path, monkeypatch, schedule):
    # A clock that advances 20 ms per reading (about 60 ms per step): the budget's arithmetic, not this machine's
    # load, decides the step count (~30 steps in 1.8 s).
    readings = itertools.count()
    monkeypatch.setattr(train.time, "time", lambda: 0.02 * next(readings))
    budgeted = run(tmp_path, "--name", "budget", "--time_budget", "0.03", "--warmup", "8", "--lr_schedule", schedule)
    monkeypatch.undo()
    cfg = train.Config(**json.loads((budgeted / "config.json").read_text()))
    events = [json.loads(line) for line in (budgeted / "log.jsonl").read_text().splitlines()]
    timed = [e for e in events if e.get("event") == "time_budget"]
    assert timed[0]["step"] == train.calibration_steps(cfg)[1] == 8
    assert timed[-1]["steps"] == cfg.steps >= 9 and events[-1]["step"] == cfg.steps
    if schedule == "wsd":                        # timed again over the stable phase, before the decay begins
        assert len(timed) == 2 and 8 < timed[1]["step"] <= train.decay_start(cfg)
    else:
        assert len(timed) == 1
    fixed = run(tmp_path, "--name", "fixed", "--steps", str(cfg.steps), "--warmup", "8", "--lr_schedule", schedule)
    a, b = weights(train.checkpoints(budgeted)[-1]), weights(train.checkpoints(fixed)[-1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_steps_in_budget_fills_the_time_left_and_no_more():
    cfg = train.Config(time_budget=1.0, sample_every=100, sample_steps=10, batch_size=48)
    step_s, elapsed, step = 0.1, 5.0, 20
    total = train.steps_in_budget(cfg, elapsed, step, step_s)
    grid_s = step_s * 4 * len(train.SAMPLE_PROMPTS) * cfg.sample_steps * 2 / (3 * cfg.batch_size)

    def seconds(n):
        return (n - step) * step_s + (n // cfg.sample_every + 1) * grid_s
    left = (1 - train.BUDGET_MARGIN) * (60 - elapsed)
    assert seconds(total) <= left < seconds(total + 1)
    assert train.parse_args(["--steps", "7"])[0].time_budget == 0.0          # an explicit step count wins
    assert train.parse_args([])[0].time_budget > 0                            # the cpu preset runs on a budget
    with pytest.raises(SystemExit):
        train.parse_args(["--time_budget", "1", "--warmup", "4"])


def test_compiled_runs_see_one_text_length():
    tokenizer = train.WordTokenizer.build(["a red star", "a small blue circle on a plain background"], max_length=12)
    for compile_, length in ((False, 9), (True, 12)):
        cfg = train.Config(compile=compile_, max_text_length=12)
        captions = ["a red star", "a small blue circle on a plain background"]
        ids, mask = train.TextConditioner(cfg, tokenizer, torch.device("cpu"))(captions)
        assert ids.shape == mask.shape == (2, length) and mask.sum().item() == 4 + 9
