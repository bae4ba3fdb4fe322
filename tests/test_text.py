"""Text data, language models and `dlcli generate` (issue 18)."""

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from dlcli import checkpoint, data, losses, run, spec, text
from dlcli.cli import main
from dlcli.datasets.text import Arithmetic
from dlcli.errors import DataError, SpecError
from dlcli.generate import Stepper, encode_prompt, generate, next_token, open_text_model

CORPUS = "the cat sat on the mat. the dog sat on the log.\n" * 12 + "a cat! zq"

SPEC = """\
name: tiny_lm
seed: 0
data:
  source: corpus.txt
  text: {{seq_len: 8, stride: 4}}
  validation_split: 0.2
model:
  layers:
    - embedding: 4
    - {cell}: {{units: 8, return_sequences: true}}
    - dense: {{units: vocab}}
loss: cross_entropy
optimizer: {{name: adam, lr: 0.02}}
train: {{epochs: 1, batch_size: 16, clip_norm: 1.0}}
"""


@pytest.fixture
def corpus_spec(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)

    def write(cell="lstm", **replace):
        body = SPEC.format(cell=cell)
        for old, new in replace.items():
            body = body.replace(old, new)
        p = tmp_path / f"lm_{cell}.yaml"
        p.write_text(body)
        return p

    return write


def load(path):
    s = spec.load(path)
    model, loss = run.build(s)
    return s, model, loss, data.load(s, loss, model.output_shape)


# ---------------------------------------------------------------- tokens, vocabulary, windows


def test_vocabulary_encodes_decodes_and_maps_unknown_tokens_to_unk():
    v = text.Vocabulary.build(list("hello world"), "char")
    assert v.tokens[0] == "<unk>" and v.tokens[1:] == sorted(set("hello world"))
    ids = v.encode(list("held"))
    assert v.decode(ids) == "held"
    assert list(v.encode(list("hex"))) == [v.index["h"], v.index["e"], 0]
    assert v.unknown(list("hexxz")) == ["x", "z"]
    again = text.Vocabulary.from_meta(json.loads(json.dumps(v.to_meta())))
    assert again.tokens == v.tokens and again.level == "char"


def test_word_level_tokens_join_back_to_the_text():
    s = "Hello, world!\n  two  words."
    tokens = text.tokenize(s, "word")
    assert "".join(tokens) == s
    assert "world" in tokens and "," in tokens and "\n  " in tokens


def test_windows_are_next_token_pairs_every_stride():
    ids = np.arange(20)
    x, y = text.windows(ids, 5, 3)
    assert x.shape == y.shape == (5, 5)  # starts 0, 3, 6, 9, 12 (12 + 5 < 20)
    np.testing.assert_array_equal(x[:, 0], [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(y, x + 1)
    assert text.windows(np.arange(5), 5, 1)[0].shape == (0, 5)  # needs seq_len + 1 tokens


def test_validation_is_the_tail_and_the_vocabulary_comes_from_the_training_part(corpus_spec):
    s, model, loss, d = load(corpus_spec())
    v = d.vocab
    n_val = round(len(CORPUS) * 0.2)
    train_part, tail = CORPUS[:-n_val], CORPUS[-n_val:]
    assert set(v.tokens[1:]) == set(train_part)  # 'z', 'q' are only in the tail
    assert "z" not in v.index and "q" not in v.index
    # Training windows (and their targets) stay inside the training part ...
    assert d.x_train.shape[1] == 8 and len(d.x_train) == (len(train_part) - 9) // 4 + 1
    assert v.decode(d.y_train[-1])[-1] == train_part[(len(d.x_train) - 1) * 4 + 8]
    # ... and validation windows tile the tail without overlapping, unknown letters as <unk>.
    tiled = "".join(v.decode(row) for row in d.x_val)
    expected = "".join(c if c in v.index else "<unk>" for c in tail[: len(d.x_val) * 8])
    assert tiled == expected
    np.testing.assert_array_equal(d.y_val[:, :-1], d.x_val[:, 1:])
    assert d.y_train.dtype == np.int64 and model.output_shape == (8, v.size)
    assert "unknown to the vocabulary" in d.description


def test_arithmetic_lines_are_correct_sums():
    o = {"samples": 50, "digits": 3, "operators": "+-"}
    lines = Arithmetic.generate_text(o, np.random.default_rng(0)).splitlines()
    assert len(lines) == 50
    for line in lines:
        m = re.fullmatch(r"(\d{1,3})([+-])(\d{1,3})=(-?\d+)", line)
        assert m, line
        a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
        assert r == (a + b if op == "+" else a - b)
    assert {re.search("[+-]", line)[0] for line in lines} == {"+", "-"}


@pytest.mark.parametrize(
    "body,message",
    [
        ("text: {seq_len: 0}", r"data.text.seq_len must be a positive integer"),
        ("text: {level: bytes}", r"data.text.level must be one of char, word"),
        ("text: {seqlen: 8}", r"unknown field 'data.text.seqlen' \(did you mean 'seq_len'\?\)"),
        ("text: {seq_len: 8}\n  standardize: true", r"data.standardize does not apply to a text source"),
    ],
)
def test_text_block_errors_name_the_line(write_spec, body, message):
    p = write_spec(f"data:\n  source: a.txt\n  {body}\nmodel:\n  layers: [{{embedding: 4}}, {{dense: vocab}}]\n")
    with pytest.raises(SpecError, match=message) as e:
        spec.load(p)
    assert re.match(r".*spec\.yaml:\d+:\d+: ", str(e.value))


def test_vocab_needs_text_data_and_input_must_match_seq_len(write_spec):
    p = write_spec("data: builtin:xor\nmodel:\n  input: [2]\n  layers:\n    - dense: vocab\n")
    with pytest.raises(SpecError, match=r"spec.yaml:5:14: .*'vocab' is the vocabulary size of a text data source"):
        spec.load(p)
    p = write_spec("data: {source: a.txt, text: {seq_len: 8}}\nmodel:\n  input: [9]\n  layers: [embedding: 4]\n")
    with pytest.raises(SpecError, match=r"model.input must be \[8\]"):
        spec.load(p)
    s = spec.parse("data: {source: builtin:arithmetic}\nmodel: {layers: [embedding: 4, dense: vocab]}\n")
    assert s.model.input == (64,) and s.data.text["level"] == "char"


def test_text_source_problems_are_data_errors(corpus_spec, tmp_path):
    s = spec.load(corpus_spec().as_posix())
    loss = losses.make("cross_entropy")
    with pytest.raises(DataError, match=r"output must be \[8, \d+\]"):
        text.load(s, loss, (8, 3))
    (tmp_path / "corpus.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match="not UTF-8 text"):
        text.load(s, loss, (8, 40))
    (tmp_path / "corpus.txt").write_text("short")
    with pytest.raises(DataError, match="fewer than one window"):
        text.load(s, loss, (8, 40))


# ---------------------------------------------------------------- train, checkpoint, generate


@pytest.fixture
def trained(corpus_spec, tmp_path):
    p = corpus_spec()
    log = tmp_path / "m.jsonl"
    r = CliRunner().invoke(main, ["train", str(p), "-o", str(tmp_path / "lm.npz"), "--log", str(log), "-q"])
    assert r.exit_code == 0, r.output
    return tmp_path / "lm.npz", log


def test_training_logs_bits_per_character_and_stores_the_vocabulary(trained):
    ckpt_path, log = trained
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    epoch = rows[-1]
    assert epoch["event"] == "epoch"
    assert epoch["val_bpc"] == pytest.approx(epoch["val_loss"] / math.log(2), rel=1e-5)
    assert epoch["val_perplexity"] == pytest.approx(math.exp(epoch["val_loss"]), rel=1e-5)
    assert epoch["train_bpc"] == pytest.approx(epoch["train_loss"] / math.log(2), rel=1e-5)
    assert rows[0]["event"] == "start" and rows[1]["event"] == "step" and "bpc" in rows[1]
    ck = checkpoint.load(ckpt_path)
    assert ck.meta["text"]["tokens"][0] == "<unk>"
    assert set(ck.meta["text"]["tokens"][1:]) == set(CORPUS[: -round(len(CORPUS) * 0.2)])


def test_stepping_the_model_gives_the_logits_of_the_full_forward_pass(trained):
    tm = open_text_model(trained[0])
    ids = tm.vocab.encode(list("the cat "))
    full = tm.model.forward(ids[None], training=False)[0]
    step = Stepper(tm.model)
    stepped = np.stack([step(np.array([i]))[0] for i in ids])
    np.testing.assert_allclose(stepped, full, rtol=1e-4, atol=1e-5)


def test_generate_streams_repeatable_text_from_the_prompt(trained):
    ckpt = str(trained[0])
    run = lambda *a: CliRunner().invoke(main, ["generate", ckpt, *a])  # noqa: E731
    a = run("--prompt", "the ", "--length", "30", "--seed", "3")
    b = run("--prompt", "the ", "--length", "30", "--seed", "3")
    c = run("--prompt", "the ", "--length", "30", "--seed", "4")
    assert a.exit_code == 0, a.output
    assert a.output == b.output and a.output.startswith("the ")
    assert len(a.output) == len("the ") + 30 + 1 and "<unk>" not in a.output
    assert a.output != c.output  # sampling does depend on the seed
    greedy = run("--prompt", "the ", "--length", "20", "--temperature", "0", "--seed", "9")
    assert greedy.output == run("--prompt", "the ", "--length", "20", "--top-k", "1").output


def test_next_token_honours_temperature_zero_and_top_k():
    rng = np.random.default_rng(0)
    logits = np.array([5.0, 1.0, 3.0, 2.0])
    assert next_token(logits, 0, None, rng) == 2  # id 0 (<unk>) is never produced
    draws = {next_token(logits, 1.0, 2, rng) for _ in range(200)}
    assert draws == {2, 3}


def test_generate_bad_input_is_one_line_exit_2(trained, tmp_path):
    ckpt = str(trained[0])
    r = CliRunner().invoke(main, ["generate", ckpt, "--prompt", "the zq"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0
    assert "2 characters not in the model's vocabulary" in r.output and "'z'" in r.output
    assert "--unknown unk" in r.output
    for bad in ("nan", "inf"):  # sampling with them raised a traceback from NumPy
        r = CliRunner().invoke(main, ["generate", ckpt, "--temperature", bad, "--length", "3"])
        assert r.exit_code == 2 and "not a finite number" in r.output and "Traceback" not in r.output
    ok = CliRunner().invoke(main, ["generate", ckpt, "--prompt", "the zq", "--unknown", "unk", "--length", "3"])
    assert ok.exit_code == 0 and ok.output.startswith("the zq")
    # A checkpoint that is not a text model.
    other = tmp_path / "xor.yaml"
    other.write_text("data: {source: builtin:xor, options: {samples: 64}}\nmodel: {input: [2], layers: [dense: 2]}\n")
    assert CliRunner().invoke(main, ["train", str(other), "-o", str(tmp_path / "xor.npz"), "-q"]).exit_code == 0
    r = CliRunner().invoke(main, ["generate", str(tmp_path / "xor.npz")])
    assert r.exit_code == 2 and "not a text model" in r.output and r.output.count("\n") == 1


def test_generate_refuses_a_graph_model(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    p = tmp_path / "graph.yaml"
    p.write_text(
        "data: {source: corpus.txt, text: {seq_len: 8}}\n"
        "model:\n  layers:\n    - embedding: 4\n    - {lstm: {units: 8, return_sequences: true}, name: h}\n"
        "    - {dense: 8, name: f}\n    - {add: null, input: [h, f]}\n    - dense: vocab\n"
        "train: {epochs: 1, batch_size: 16}\n"
    )
    r = CliRunner().invoke(main, ["train", str(p), "-o", str(tmp_path / "g.npz"), "-q"])
    assert r.exit_code == 0, r.output
    g = CliRunner().invoke(main, ["generate", str(tmp_path / "g.npz")])
    assert g.exit_code == 2 and "a graph model" in g.output and g.output.count("\n") == 1, g.output


def test_encode_prompt_maps_unknown_characters_to_unk_on_request():
    v = text.Vocabulary.build(list("abc"), "char")
    with pytest.raises(DataError):
        encode_prompt(v, "abz")
    assert list(encode_prompt(v, "abz", unknown="unk")) == [1, 2, 0]


def test_resume_keeps_the_checkpoint_vocabulary(trained, tmp_path):
    ckpt_path, _ = trained
    before = checkpoint.load(ckpt_path).meta["text"]["tokens"]
    corpus = tmp_path / "corpus.txt"
    text_before = corpus.read_text()
    corpus.write_text(text_before + "\nnew letters: QXJ" * 30)  # would change a freshly built vocabulary
    r = CliRunner().invoke(main, ["train", "--resume", str(ckpt_path), "--epochs", "2", "-q"])
    assert r.exit_code == 2 and "cannot resume: the data differ" in r.output  # the old tail would be trained on
    corpus.write_text(text_before)
    r = CliRunner().invoke(main, ["train", "--resume", str(ckpt_path), "--epochs", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert checkpoint.load(ckpt_path).meta["text"]["tokens"] == before


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_rnn_language_models_generate(corpus_spec, tmp_path, cell):
    p = corpus_spec(cell)
    out = tmp_path / f"{cell}.npz"
    assert CliRunner().invoke(main, ["train", str(p), "-o", str(out), "-q"]).exit_code == 0
    tm = open_text_model(out)
    ids = tm.vocab.encode(list("on the m"))
    step = Stepper(tm.model)
    stepped = np.stack([step(np.array([i]))[0] for i in ids])
    np.testing.assert_allclose(stepped, tm.model.forward(ids[None])[0], rtol=1e-4, atol=1e-5)


def test_inspect_gradients_and_gradcheck_work_on_a_text_model(corpus_spec):
    p = str(corpus_spec())
    r = CliRunner().invoke(main, ["inspect-gradients", p, "--json", "--batches", "2"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["layers"][0]["kind"] == "embedding" and out["layers"][0]["input_grad_norm"] is None
    assert out["layers"][0]["grad_norm"]["mean"] > 0
    (ts,) = out["time_steps"]
    assert ts["kind"] == "lstm" and len(ts["grad_norms"]) == 8 and all(g > 0 for g in ts["grad_norms"])
    table = CliRunner().invoke(main, ["inspect-gradients", p, "--batches", "1"])
    assert table.exit_code == 0 and "input (ids)" in table.output
    g = CliRunner().invoke(main, ["gradcheck", p, "--samples", "5", "--batch-size", "2"])
    assert g.exit_code == 0, g.output
    assert "not differentiable" in g.output and "n/a" in g.output


def test_dashboard_and_plain_progress_show_bits_per_character(corpus_spec, tmp_path):
    import io

    from rich.console import Console

    from dlcli.dashboard import Dashboard

    r = CliRunner().invoke(main, ["train", str(corpus_spec()), "-o", str(tmp_path / "plain.npz")])
    assert r.exit_code == 0, r.output
    assert re.search(r"epoch 1/1 train_loss \S+ train_bpc \d\.\d{3} .*val_bpc \d\.\d{3} val_ppl \d", r.output), r.output
    console = Console(file=io.StringIO(), record=True, width=160, force_terminal=True, color_system=None)
    dash = Dashboard(console=console)
    run.train(spec.load(corpus_spec()), output=tmp_path / "dash.npz", display=dash)
    frame = Console(file=io.StringIO(), record=True, width=160, color_system=None)
    frame.print(dash.render())
    shown = frame.export_text()
    assert re.search(r"loss \d\.\d+ +bpc \d\.\d{3}", shown) and re.search(r"val bpc \d\.\d{3} +val ppl", shown), shown


def test_word_level_model_trains_logs_bits_per_word_and_generates_words(corpus_spec, tmp_path):
    p = corpus_spec(**{"text: {seq_len: 8, stride: 4}": "text: {level: word, seq_len: 6, stride: 2, min_count: 2}"})
    s = spec.load(p)
    vocab = text.vocabulary(s)
    assert "cat" in vocab.index and " " in vocab.index and "zq" not in vocab.index
    assert "!" not in vocab.index  # seen once in the training part: below min_count
    log = tmp_path / "w.jsonl"
    r = CliRunner().invoke(main, ["train", str(p), "-o", str(tmp_path / "w.npz"), "--log", str(log), "-q"])
    assert r.exit_code == 0, r.output
    epoch = json.loads(log.read_text().splitlines()[-1])
    assert epoch["val_bits_per_word"] == pytest.approx(epoch["val_loss"] / math.log(2), rel=1e-5)
    g = CliRunner().invoke(main, ["generate", str(tmp_path / "w.npz"), "--prompt", "the cat", "--length", "5"])
    assert g.exit_code == 0 and g.output.startswith("the cat")
    tokens = list(generate(open_text_model(tmp_path / "w.npz"), "the cat", length=5))
    assert len(tokens) == 5 and all(t in vocab.index and t != "<unk>" for t in tokens)
    assert g.output == "the cat" + "".join(tokens) + "\n"  # the command streams the same tokens (seed 0)


def test_predict_checks_every_token_id_before_writing_any_prediction(trained, tmp_path):
    """A bad id deep in a text model's input stopped `predict` midway, after thousands of
    rows on stdout, naming neither file nor row: now one line before any output, exit 2."""
    from dlcli.predict import open_model

    ckpt = str(trained[0])
    model = open_model(ckpt)
    (seq_len,), vocab = model.input_shape, model.model.layers[0].vocab_size
    ids = np.ones((3000, seq_len), np.int64)
    ids[2500, 5] = vocab + 70
    np.save(tmp_path / "ids.npy", ids)
    r = CliRunner().invoke(main, ["predict", ckpt, str(tmp_path / "ids.npy")])
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert f"ids.npy: row 2500 (counting from 0) has token id {vocab + 70}" in r.stderr
    np.save(tmp_path / "half.npy", np.full((4, seq_len), 1.5, np.float32))
    r = CliRunner().invoke(main, ["predict", ckpt, str(tmp_path / "half.npy")])
    assert r.exit_code == 2 and "row 0 (counting from 0) has token id 1.5" in r.stderr, r.output
    ids[2500, 5] = 1
    assert CliRunner().invoke(main, ["predict", ckpt, str(tmp_path / "ids.npy")]).exit_code == 2  # the file as it was
    np.save(tmp_path / "ids.npy", ids)
    good = CliRunner().invoke(main, ["predict", ckpt, str(tmp_path / "ids.npy")])
    assert good.exit_code == 0 and len(good.stdout.splitlines()) == 3001, good.output


@pytest.mark.parametrize("level,unk", [("char", "a"), ("word", "the")])
def test_an_unknown_token_the_text_holds_is_refused(write_spec, tmp_path, level, unk):
    """unk: "a" swallowed every letter a (vocabulary 29 "with a", a never generated)."""
    (tmp_path / "t.txt").write_text("the cat sat on the mat and the rat ran away " * 20)
    p = write_spec(
        f"data: {{source: {tmp_path / 't.txt'}, text: {{level: {level}, seq_len: 8, unk: {unk}}}}}\n"
        "model:\n  layers: [{embedding: 4}, {lstm: {units: 8, return_sequences: true}}, {dense: vocab}]\n"
    )
    r = CliRunner().invoke(main, ["summary", str(p)])
    assert r.exit_code == 2 and f"data.text.unk '{unk}' occurs in the text" in r.output, r.output
    assert re.search(r"spec\.yaml:\d+:\d+: ", r.output) and "Traceback" not in r.output


def test_summary_of_a_checkpoint_whose_text_is_gone_or_changed(write_spec, tmp_path):
    """The README says a text checkpoint's summary works without its text: it ended in a
    data error; an edited text said "spec OK" with no word that the data differ."""
    src = tmp_path / "s.txt"
    src.write_text("the cat sat on the mat. " * 40)
    p = write_spec(
        f"data: {{source: {src}, text: {{seq_len: 8}}}}\n"
        "model:\n  layers: [{embedding: 4}, {lstm: {units: 8, return_sequences: true}}, {dense: vocab}]\n"
        "train: {epochs: 1, batch_size: 16}\n"
    )
    ckpt = str(tmp_path / "lm.npz")
    assert CliRunner().invoke(main, ["train", str(p), "-o", ckpt, "-q"]).exit_code == 0
    src.write_text("the cat sat on the mat. " * 41)
    r = CliRunner().invoke(main, ["summary", ckpt])
    assert r.exit_code == 0 and "--resume would refuse: the data differ" in r.output, r.output
    src.unlink()
    r = CliRunner().invoke(main, ["summary", ckpt])
    assert r.exit_code == 0 and "data file not found" in r.output and "only --resume needs them" in r.output, r.output


def test_a_text_source_with_another_loss_is_a_spec_error_even_without_the_data(write_spec):
    """`summary --no-data` said "spec OK" for a text spec with loss: mse that can never train."""
    p = write_spec(
        "data: {source: gone.txt, text: {seq_len: 8}}\n"
        "model:\n  layers: [{embedding: 4}, {lstm: {units: 8, return_sequences: true}}, {dense: vocab}]\n"
        "loss: mse\n"
    )
    r = CliRunner().invoke(main, ["summary", str(p), "--no-data"])
    assert r.exit_code == 2 and "loss: mse: a text source trains next-token prediction" in r.output, r.output
    assert re.search(r"spec\.yaml:4:\d+: ", r.output)
