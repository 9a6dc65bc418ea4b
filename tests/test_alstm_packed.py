"""ALSTM takes a PackedSequence like nn.LSTM: each sequence ends at its own length."""

import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

from unbottleneck import ALSTM
from unbottleneck.adaptive import ALSTMMasks

F64 = torch.float64


def _row(masks, b):
    return ALSTMMasks(*(tuple(None if m is None else m[b:b + 1] for m in kind) for kind in masks))


def test_packed_batch_equals_each_sequence_alone_in_values_states_and_gradients():
    torch.manual_seed(0)
    m = ALSTM(5, 6, 3, num_layers=2, output_size=4, dropout_hidden=0.3, dropout_adapt=0.2, dtype=F64)
    seqs = [torch.randn(n, 5, dtype=F64, requires_grad=True) for n in (4, 7, 1, 7)]
    masks = m.sample_masks(len(seqs))
    out, state = m(pack_sequence(seqs, enforce_sorted=False), masks=masks)
    padded, lengths = pad_packed_sequence(out)
    assert lengths.tolist() == [4, 7, 1, 7]
    loss = padded.pow(2).sum() + sum(t.sum() for s in state for t in s)
    grads = torch.autograd.grad(loss, seqs)
    for b, seq in enumerate(seqs):
        alone, alone_state = m(seq.unsqueeze(1), masks=_row(masks, b))
        n = seq.shape[0]
        assert torch.allclose(padded[:n, b], alone[:, 0], atol=1e-13)
        assert not padded[n:, b].any()  # nothing beyond the sequence's end
        for s_packed, s_alone in zip(state, alone_state, strict=True):
            for a, c in zip(s_packed, s_alone, strict=True):
                assert torch.allclose(a[b], c[0], atol=1e-13)
        loss_b = alone.pow(2).sum() + sum(t.sum() for s in alone_state for t in s)
        (g,) = torch.autograd.grad(loss_b, [seq])
        assert torch.allclose(grads[b], g, atol=1e-12)


def test_packed_output_matches_nn_lstm_layout():
    m = ALSTM(3, 4, 2).eval()
    seqs = [torch.randn(n, 3) for n in (2, 5)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    out, state = m(packed)
    ref, _ = torch.nn.LSTM(3, 4)(packed)
    assert type(out) is type(ref) and torch.equal(out.batch_sizes, ref.batch_sizes)
    assert state[0].h.shape == (2, 4)
