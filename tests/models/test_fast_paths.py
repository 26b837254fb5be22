"""trainer.fast_paths: the same model computed faster. Each path must give the stock model's outputs and gradients
(to float rounding), leave the parameters and the saved model stock, and keep dropout's distribution and
determinism (gradient checkpointing replays it)."""

import copy
import json

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from speechkit.models import fast_paths

CPU = torch.device("cpu")
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
             layerdrop=0.0, mask_time_prob=0.0, final_dropout=0.0)
TINY_CONV = dict(conv_dim=[16, 24, 32, 32], conv_kernel=[10, 8, 4, 4], conv_stride=[5, 4, 4, 4])  # conf/model/tiny
XLSR_CONV = dict(conv_dim=[16] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])


def _model(conv, norm="layer", dropout=0.0, **extra):
    torch.manual_seed(0)
    config = Wav2Vec2Config(**SMALL, **conv, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
                            conv_bias=norm == "layer", hidden_dropout=dropout, attention_dropout=dropout,
                            activation_dropout=dropout, feat_proj_dropout=dropout, **extra)
    return Wav2Vec2ForCTC(config)


@pytest.mark.parametrize("kernel,stride", [(10, 5), (8, 4), (4, 4), (3, 2), (2, 2), (5, 3), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_time_major_convolution_is_conv1d(kernel, stride, bias):
    torch.manual_seed(kernel * 10 + stride)
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride, bias=bias)
    for steps in (kernel, kernel + 1, 37, 64):  # whole blocks, a partial last block, the shortest input
        x = torch.randn(3, steps, 6, requires_grad=True)
        want = conv(x.transpose(1, 2)).transpose(1, 2)
        got = fast_paths.conv_time_major(x, conv)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(want)
        want_grads = torch.autograd.grad(want, [x, conv.weight], g)
        got_grads = torch.autograd.grad(got, [x, conv.weight], g)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shorter than the kernel"):
        fast_paths.conv_time_major(torch.randn(1, kernel - 1, 6), conv)


@pytest.mark.parametrize("conv,norm", [(TINY_CONV, "layer"), (XLSR_CONV, "layer"), (XLSR_CONV, "group")])
def test_fast_model_gives_the_stock_outputs_and_gradients(conv, norm):
    stock = _model(conv, norm)
    fast = copy.deepcopy(stock)
    applied = fast_paths.apply(fast, CPU)
    assert ("time-major conv feature encoder" in applied) == (norm == "layer")  # group-norm stacks stay stock
    assert list(fast.state_dict()) == list(stock.state_dict())
    for samples in (16000, 12345):
        x, labels = torch.randn(2, samples), torch.randint(1, 12, (2, 5))
        mask = torch.ones(2, samples, dtype=torch.long)
        mask[1, samples // 2:] = 0  # a padded clip
        want, got = stock(x, attention_mask=mask, labels=labels), fast(x, attention_mask=mask, labels=labels)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
        want.loss.backward()
        got.loss.backward()
        for (name, a), b in zip(fast.named_parameters(), stock.parameters()):
            if a.grad is None or name.endswith("k_proj.bias"):  # the key bias's true gradient is 0: rounding only
                assert (a.grad is None) == (b.grad is None), name
                continue
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5 * b.grad.abs().max().item(),
                                       msg=name)
        fast.zero_grad(), stock.zero_grad()


def test_dropout_masks_keep_the_distribution_and_replay_under_a_seed():
    x = torch.ones(400, 1000)
    torch.manual_seed(1)
    out = fast_paths.dropout16(x, 0.1)
    kept = (out != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.003  # 400 000 draws: the standard error is 0.0005
    assert abs(out.mean().item() - 1.0) < 0.004  # unbiased: kept elements scaled by 1 / keep probability
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 65536 / (65536 - round(0.1 * 65536))))
    rows = (out != 0).float().mean(0)
    assert rows.std().item() < 0.03  # no column (lane of a 64-bit draw) kept more than the others
    torch.manual_seed(1)
    assert torch.equal(fast_paths.dropout16(x, 0.1), out)
    assert torch.equal(fast_paths.dropout16(x, 0.1, training=False), x)
    y = torch.randn(50, 70, requires_grad=True)
    torch.manual_seed(2)
    z = fast_paths.dropout16(y, 0.3)
    (g,) = torch.autograd.grad(z, y, torch.ones_like(z))
    torch.testing.assert_close(g, (z != 0).float() / (1 - round(0.3 * 65536) / 65536))


def test_attention_path_is_sdpa_without_dropout_and_masks_padding():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False  # padded keys
    module = torch.nn.Module()
    module.is_causal = False  # as wav2vec2's attention says (SDPA's default is causal)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    got, _ = fast_paths._attention(module, q, k, v, mask, dropout=0.0)  # no dropout (evaluation): plain SDPA
    assert torch.equal(got, want)
    got, _ = fast_paths._attention(module, q, k, v, mask, dropout=1 / 65536)  # the math path, dropping ~nothing
    torch.testing.assert_close(got, want * 65536 / 65535, rtol=1e-4, atol=1e-5)


def test_cpu_training_model_uses_fast_dropout_and_stays_a_stock_model(tmp_path):
    model = _model(TINY_CONV, dropout=0.1)
    applied = fast_paths.apply(model, CPU)
    assert applied[0] == "time-major conv feature encoder" and "attention dropout with 16-bit masks" in applied
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropouts and all(type(m) is fast_paths.Dropout16 for m in dropouts)
    assert not fast_paths.apply(_model(TINY_CONV, dropout=0.1), torch.device("cuda"))[1:]  # off the CPU: stock dropout
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForCTC"] and "speechkit" not in json.dumps(config)
    reloaded = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    model.eval()
    x = torch.randn(1, 8000)
    torch.testing.assert_close(model(x).logits, reloaded(x).logits, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_replays_the_fast_dropout_masks():
    """Checkpointed layers are run again in the backward pass; their dropout masks must be the forward pass's, or the
    gradients are those of another network."""
    plain = _model(TINY_CONV, dropout=0.2)
    fast_paths.apply(plain, CPU)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    x, labels = torch.randn(2, 16000), torch.randint(1, 12, (2, 5))
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(3)
        model(x, labels=labels).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        if a.grad is not None and not name.endswith("k_proj.bias"):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6 * a.grad.abs().max().item(), msg=name)
