"""Outputs never replace what the project did not write: lm-eval-tasks, merge --output, adapter
exports, predict output, the data cache. A folder the project wrote is replaced whole, in one swap."""

import json
import os
from types import SimpleNamespace

import pytest
from conftest import REPO, run_cli

from lora_lightning import atomic_write
from lora_lightning.atomic_write import atomic_folder
from lora_lightning.callbacks import AdapterCheckpoint, JsonlPredictionWriter
from lora_lightning.data import FlanDataModule
from lora_lightning.data.cache import load_cached
from lora_lightning.errors import UserInputError
from lora_lightning.evaluation.harness import write_harness_tasks
from lora_lightning.loading import load_causal_lm, load_tokenizer
from lora_lightning.model.lora import apply_lora
from lora_lightning.model.merge import MergeError, merge_adapter

CONFIG = str(REPO / "configs" / "default.yaml")
MANIFEST = ".lora_lightning_manifest.json"  # spelled out: this file also runs against code without one


@pytest.fixture(scope="module")
def harness_input(tiny_models):
    dm = FlanDataModule(tasks=["bool_q"], tokenizer=str(tiny_models["llama"]), cache_dir=None, prompt_format="plain")
    dm.load_tokenizer()
    return dm.eval_examples(limit=2), dm.tokenizer


def write_tasks(out, harness_input, overwrite=False):
    examples, tokenizer = harness_input
    return write_harness_tasks(out, examples, tokenizer, "plain", **({"overwrite": True} if overwrite else {}))


def user_folder(path, name="notes.txt"):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text("my own notes")
    return path


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_lm_eval_tasks_refuses_a_folder_holding_a_user_file_unless_overwrite(harness_input, tmp_path):
    out = user_folder(tmp_path / "tasks")
    with pytest.raises(UserInputError, match="not empty, and holds files lora_lightning did not write \\(notes.txt\\)"):
        write_tasks(out, harness_input)
    assert names(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "my own notes"
    assert names(tmp_path) == ["tasks"]  # no temporary folder left beside it
    write_tasks(out, harness_input, overwrite=True)
    assert names(out) == sorted([MANIFEST, "bool_q.jsonl", "bool_q.yaml", "lora_lightning_metrics.py"])


def test_re_export_of_the_projects_own_folder_needs_no_overwrite_but_a_dropped_file_stops_it(harness_input, tmp_path):
    out = tmp_path / "tasks"
    write_tasks(out, harness_input)
    listed = json.loads((out / MANIFEST).read_text())["paths"]
    assert listed == ["bool_q.jsonl", "bool_q.yaml", "lora_lightning_metrics.py"]
    write_tasks(out, harness_input)  # our own folder: replaced without --overwrite
    (out / "bool_q.yaml").write_text("edited")  # editing one of our files keeps the folder ours
    write_tasks(out, harness_input)
    assert (out / "bool_q.yaml").read_text() != "edited"
    user_folder(out, "results.csv")
    with pytest.raises(UserInputError, match=r"holds files lora_lightning did not write \(results.csv\)"):
        write_tasks(out, harness_input)
    assert (out / "results.csv").read_text() == "my own notes"


def test_the_current_directory_and_a_checkout_are_refused_even_with_overwrite(harness_input, tmp_path, monkeypatch):
    checkout = user_folder(tmp_path / "project", "train.py")
    (checkout / ".git").mkdir()
    cwd = user_folder(tmp_path / "work")
    monkeypatch.chdir(cwd)
    for overwrite in (False, True):
        for target, reason in ((".", "current directory"), (str(tmp_path), "holding it"), (str(checkout), ".git")):
            with pytest.raises(UserInputError, match=reason):
                write_tasks(target, harness_input, overwrite)
    for target in (os.path.expanduser("~"), "/"):
        with pytest.raises(UserInputError, match="refusing to replace"):
            atomic_write.check_writable_folder(target, overwrite=True)
    assert names(cwd) == ["notes.txt"] and names(checkout) == [".git", "train.py"]


def test_lm_eval_tasks_cli_into_a_user_folder(tiny_models, tmp_path):
    out = user_folder(tmp_path / "tasks")
    args = ["--config", CONFIG, "--model.model_name", str(tiny_models["llama"]), "--data.tasks", "[bool_q]"]
    args += ["--data.cache_dir", str(tmp_path / "cache"), "--data.eval_examples_per_task", "2"]
    refused = run_cli("lm-eval-tasks", str(out), *args)
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-lightning: error: output folder") and "--overwrite" in lines[0]
    assert names(out) == ["notes.txt"]


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    """A tiny adapter saved as training saves it (weights and tokenizer)."""
    folder = tmp_path_factory.mktemp("adapter") / "a"
    model = apply_lora(load_causal_lm(str(tiny_models["llama"])), r=4, dropout=0.0)
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_models["llama"])).save_pretrained(folder)
    return folder


def test_merge_into_a_user_folder_is_refused_before_loading_and_overwrite_replaces_it_whole(adapter, tmp_path):
    out = user_folder(tmp_path / "merged")
    refused = run_cli("merge", "--adapter", str(tmp_path / "no-such-adapter"), "--output", str(out))
    assert refused.returncode == 2  # the output is checked before any model is looked for
    assert refused.stderr.strip().splitlines() == [
        f"lora-lightning: error: output folder {str(out)!r} exists and is not empty, and holds files lora_lightning "
        "did not write (notes.txt); choose an empty or new folder, or pass --overwrite true to replace it whole"
    ]
    assert names(out) == ["notes.txt"]
    merge_adapter(adapter, out, overwrite=True)
    assert "notes.txt" not in names(out) and {"config.json", "model.safetensors", MANIFEST} <= set(names(out))
    merge_adapter(adapter, out)  # the project's own merge: replaced without --overwrite
    with pytest.raises(MergeError, match="current directory"):
        merge_adapter(adapter, ".", overwrite=True)


def test_merge_refuses_a_checkout_even_with_overwrite(adapter, tmp_path):
    checkout = user_folder(tmp_path / "project", "train.py")
    (checkout / ".git").mkdir()
    with pytest.raises(MergeError, match=r"a project checkout \(it holds .git\)"):
        merge_adapter(adapter, checkout, overwrite=True)
    assert names(checkout) == [".git", "train.py"]


def one_error_line(result):
    """The error, which is one line and the last (Lightning's info lines may come before it)."""
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:]
    return lines[-1]


def stand_in_trainer(root):
    return SimpleNamespace(default_root_dir=str(root), is_global_zero=True)


def test_predict_output_over_a_user_file_is_refused_unless_overwrite(tmp_path):
    mine = tmp_path / "completions.jsonl"
    mine.write_text("my own file\n")
    trainer, rows = stand_in_trainer(tmp_path), ([[{"prompt": "p", "completion": "c"}]], [[[0]]])
    writer = JsonlPredictionWriter(output=str(mine))
    with pytest.raises(UserInputError, match="--predictions.overwrite true"):
        writer.setup(trainer, None, "predict")  # when predict starts, before the model is loaded
    with pytest.raises(UserInputError, match="did not write it"):
        writer.write_on_epoch_end(trainer, None, *rows)
    assert mine.read_text() == "my own file\n"
    JsonlPredictionWriter(output=str(mine), overwrite=True).write_on_epoch_end(trainer, None, *rows)
    assert json.loads(mine.read_text()) == {"prompt": "p", "completion": "c"}
    writer.setup(trainer, None, "predict")  # now the project's file: rewritten without overwrite
    writer.write_on_epoch_end(trainer, None, *rows)
    assert json.loads((tmp_path / MANIFEST).read_text())["paths"] == ["completions.jsonl"]


def test_predict_cli_refuses_a_user_file(adapter, tmp_path):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(json.dumps({"prompt": "Is 1 a number?"}) + "\n")
    out.write_text("mine\n")
    result = run_cli(
        "predict",
        *("--config", CONFIG, "--model.model_name", "null", "--model.adapter", str(adapter)),
        *("--data.predict_file", str(prompts), "--predictions.output", str(out)),
        *("--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.precision", "32-true"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert one_error_line(result).startswith("lora-lightning: error: output file") and out.read_text() == "mine\n"


def export(folder, text):
    with atomic_folder(folder) as tmp:
        (tmp / "adapter_model.safetensors").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "file").write_text(text)


def test_swapping_a_folder_in_leaves_no_moment_without_the_target(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    export(target, "old")
    old_inode = target.stat().st_ino
    gaps = []

    def watched(fn):
        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            if not (target / "adapter_model.safetensors").is_file():
                gaps.append(fn.__name__)
            return result

        return call

    for name in ("replace", "rename", "unlink", "rmdir"):
        monkeypatch.setattr(atomic_write.os, name, watched(getattr(os, name)))
    monkeypatch.setattr(atomic_write.shutil, "rmtree", watched(atomic_write.shutil.rmtree))
    export(target, "new")
    assert gaps == []  # after every rename and removal the target was there
    assert target.stat().st_ino != old_inode and (target / "sub" / "file").read_text() == "new"
    assert names(tmp_path) == ["adapter"]  # the old folder removed, nothing left beside it


def test_without_rename_exchange_the_two_rename_path_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_write, "rename_exchange", lambda a, b: False)
    target = tmp_path / "adapter"
    export(target, "old")
    export(target, "new")
    assert (target / "adapter_model.safetensors").read_text() == "new" and names(tmp_path) == ["adapter"]


def test_exported_files_are_fsynced_before_the_swap(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(atomic_write.os, "fsync", fsync)
    export(tmp_path / "adapter", "x")
    tmp = next(p for p in synced if os.path.basename(p).startswith(".adapter."))
    done = [os.path.relpath(p, tmp) for p in synced]
    assert done.index("sub/file") < done.index("sub") < done.index(".")  # each file, then its folder
    assert {"adapter_model.safetensors", MANIFEST} <= set(done) and synced[-1] == str(tmp_path)


def test_a_user_file_in_an_exported_adapter_folder_stops_the_next_fit_at_its_start(tmp_path):
    root = tmp_path / "run"
    export(root / "adapter", "ours")
    callback, trainer, module = AdapterCheckpoint(dirpath=str(root)), stand_in_trainer(root), SimpleNamespace()
    callback.setup(trainer, module, "fit")  # the project's own export: fine
    user_folder(root / "adapter")
    with pytest.raises(UserInputError, match="notes.txt.*--adapter_export.overwrite true"):
        callback.setup(trainer, module, "fit")
    with pytest.raises(UserInputError, match="notes.txt"):
        export(root / "adapter", "new")
    assert names(root / "adapter") == sorted([MANIFEST, "adapter_model.safetensors", "notes.txt", "sub"])
    AdapterCheckpoint(dirpath=str(root), overwrite=True).setup(trainer, module, "fit")


def test_fit_refuses_a_user_made_adapter_folder_before_training(tiny_models, tmp_path):
    root = tmp_path / "run"
    user_folder(root / "adapter_last")
    result = run_cli(
        "fit",
        *("--config", CONFIG, "--model.model_name", str(tiny_models["llama"]), "--trainer.max_steps", "1"),
        *("--trainer.default_root_dir", str(root), "--data.cache_dir", str(tmp_path / "cache")),
        *("--data.max_examples_per_task", "8", "--trainer.precision", "32-true"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "adapter_last" in one_error_line(result) and "--adapter_export.overwrite true" in result.stderr
    assert not {"adapter", "ckpt"} & set(names(root))  # nothing trained, nothing exported (only the run's config)
    assert names(root / "adapter_last") == ["notes.txt"]


def test_the_data_cache_is_rewritten_and_read_with_its_manifest(tiny_models, tmp_path):
    import datasets

    from lora_lightning.atomic_write import atomic_folder
    from lora_lightning.data.cache import write_index

    folder = tmp_path / "cache" / "key"
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    for available in (1, 2):  # the second: a re-run rewriting its own entry
        with atomic_folder(folder) as tmp:
            part = datasets.Dataset.from_dict({"input_ids": [[1, 2]]}, features=features)
            part = part.map(lambda row: row, cache_file_name=str(tmp / "train-0.arrow"))
            write_index(tmp, {"train": [part]}, {"bool_q": {"available": available}})
            del part
    loaded, stats = load_cached(folder, features)
    assert stats == {"bool_q": {"available": 2}} and loaded["train"]["input_ids"] == [[1, 2]]
    assert (folder / MANIFEST).is_file()
