"""What CPU deployment paths run beyond plain aten ops: torch.ao's dynamic quantization (packed
int8 and fp16 weights, a TorchScript object in the op's arguments), MKLDNN layout tensors
(torch.jit.optimize_for_inference, `.to_mkldnn()`), nn.Fold's col2im, and quantized weight packing.
Each is checked against truths from outside memwall: FlopCounterMode on the float model, hand
counts from shapes, and the bytes of the tensors themselves."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import one_row, profiled, rows_of
from memwall_plugin.hooks import signatures
from memwall_plugin.hooks.signatures import meta_of_key, signature
from torch.utils.flop_counter import FlopCounterMode

from memwall_plugin.formulas import LSTM_CELL_FLOPS
from memwall_plugin.records import SparseMeta

# torch.ao's eager quantization warns that it is deprecated (from torch, not memwall)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def _quantize_dynamic(model: nn.Module, types: set[type], dtype: torch.dtype) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, types, dtype=dtype)


def _fp32_flops(fn) -> int:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("dtype, weight_bytes", [(torch.qint8, 1), (torch.float16, 2)])
def test_dynamic_quantized_linear_counts_its_matmul_and_reads_its_packed_weight(dtype, weight_bytes):
    # a biased layer and an unbiased one, over a 3-D input (m = 3 x 5 rows)
    mlp = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32, bias=False)).eval()
    q = _quantize_dynamic(mlp, {nn.Linear}, dtype)
    x = torch.randn(3, 5, 64)
    m = 15
    with torch.no_grad():
        bare = q(x)

    def run() -> None:
        with torch.no_grad():
            q(x)

    rep = profiled(run)
    op = "quantized.linear_dynamic" if dtype == torch.qint8 else "quantized.linear_dynamic_fp16"
    assert rep.uncounted == ()
    rows = {r.module: r for r in rows_of(rep, op)}
    first, second = rows["0"], rows["2"]
    # FLOPs: the float model's matmuls (FlopCounterMode) plus the one bias add per output
    assert first.flops + second.flops == _fp32_flops(lambda: mlp(x)) + m * 48
    assert first.flops == 2 * m * 64 * 48 + m * 48 and second.flops == 2 * m * 48 * 32
    # bytes: the activation, the weight at its packed size (int8: the quantized weight's own
    # bytes), the float bias; the output written
    if dtype == torch.qint8:
        assert q[0].weight().int_repr().nbytes == 64 * 48
    assert first.bytes_read == x.nbytes + 64 * 48 * weight_bytes + mlp[0].bias.nbytes
    assert second.bytes_read == (m * 48 * 4) + 48 * 32 * weight_bytes
    assert first.bytes_written == m * 48 * 4 and second.bytes_written == bare.nbytes
    with torch.no_grad():
        assert torch.equal(q(x), bare)


def test_dynamic_quantized_linear_relu_adds_its_activation():
    import torch.ao.nn.intrinsic as nni

    fused = torch.ao.quantization.fuse_modules(nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval(), [["0", "1"]])
    q = _quantize_dynamic(fused, {nni.LinearReLU}, torch.qint8)
    x = torch.randn(2, 16)
    rep = profiled(lambda: q(x))
    row = one_row(rep, "quantized.linear_relu_dynamic")
    assert row.flops == _fp32_flops(lambda: fused[0](x)) + 2 * 8 + 2 * 8  # + bias adds + relu
    assert row.bytes_read == x.nbytes + 16 * 8 + 8 * 4
    assert rep.uncounted == ()


class _Recurrent(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.rnn = layer  # quantize_dynamic swaps children, never the model it is given

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


@pytest.mark.parametrize("kind, dtype", [("lstm", torch.qint8), ("lstm", torch.float16), ("gru", torch.qint8)])
def test_dynamic_quantized_lstm_and_gru_count_as_their_layers(kind, dtype):
    i, h, layers, batch, steps = 16, 32, 2, 2, 5
    layer = (nn.LSTM if kind == "lstm" else nn.GRU)(i, h, num_layers=layers, batch_first=True).eval()
    q = _quantize_dynamic(_Recurrent(layer), {nn.LSTM, nn.GRU}, dtype)
    x = torch.randn(batch, steps, i)
    rep = profiled(lambda: q(x))
    row = one_row(rep, f"aten.quantized_{kind}")
    assert rep.uncounted == ()
    # by hand, per time step and batch row and layer: each gate's input and hidden projections
    # (2 x gates x (in + h)), their sum and two biases (3 per gate), the cell (LSTM 18 per hidden
    # unit, GRU 13)
    gates, cell = (4 * h, LSTM_CELL_FLOPS) if kind == "lstm" else (3 * h, 13)
    per_row = sum(2 * gates * (n_in + h) + 3 * gates + cell * h for n_in in (i, h))
    assert row.flops == batch * steps * per_row
    # reads the input, the initial states, every weight at its packed size and the float biases
    weights = sum(p.numel() for name, p in layer.named_parameters() if name.startswith("weight"))
    biases = sum(p.nbytes for name, p in layer.named_parameters() if name.startswith("bias"))
    states = (2 if kind == "lstm" else 1) * layers * batch * h * 4
    assert row.bytes_read == x.nbytes + states + weights * (1 if dtype == torch.qint8 else 2) + biases


def test_dynamic_quantized_lstm_cell_counts_as_its_layer():
    cell = nn.LSTMCell(8, 16).eval()
    q = _quantize_dynamic(nn.Sequential(cell), {nn.LSTMCell}, torch.qint8)
    x = torch.randn(3, 8)
    rep = profiled(lambda: q(x))
    row = one_row(rep, "quantized.quantized_lstm_cell_dynamic")
    assert row.flops == 3 * (2 * 64 * (8 + 16) + 3 * 64 + LSTM_CELL_FLOPS * 16)
    assert row.bytes_read >= x.nbytes + 64 * (8 + 16) + 2 * 64 * 4


def test_packed_weights_are_read_once_and_never_kept_alive():
    lin = _quantize_dynamic(nn.Sequential(nn.Linear(8, 4)), {nn.Linear}, torch.qint8)[0]
    packed = lin._packed_params._packed_params
    key = signature(packed)
    assert key[0] == "<packed linear>"
    assert meta_of_key(key[1]).nbytes == 4 * 8 and meta_of_key(key[2]).nbytes == 4 * 4
    assert signature(packed) is key  # cached per object
    assert id(packed) in signatures._SCRIPT_OBJECTS
    ident = id(packed)
    del lin, packed
    gc.collect()
    assert ident not in signatures._SCRIPT_OBJECTS
    # any other TorchScript object stays opaque: its type's name
    conv = torch.ops.quantized.conv2d_prepack(
        torch.quantize_per_tensor(torch.randn(2, 2, 1, 1), 0.1, 0, torch.qint8), None, [1, 1], [0, 0], [1, 1], 1)
    assert signature(conv) == ("<object>", "ScriptObject")


def test_mkldnn_tensors_count_every_element_and_other_layouts_are_unaffected():
    x = torch.randn(4, 8, 8, 8)
    mk = x.to_mkldnn()
    assert mk.stride() == (1, 0, 0, 0)  # opaque storage: no broadcast
    assert meta_of_key(signature(mk)).nbytes == x.nbytes
    # a real broadcast keeps its span; sparse tensors their stored elements
    assert meta_of_key(signature(torch.randn(4, 1, 1, 1).expand(4, 8, 8, 8))).nbytes == 4 * 4
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.ones(2), (2, 2))
    assert isinstance(meta_of_key(signature(sparse)), SparseMeta)
    assert meta_of_key(signature(sparse)).numel == 2


def test_mkldnn_conversions_are_data_movement_of_every_element():
    x = torch.randn(4, 3, 8, 8)
    w = torch.randn(8, 3, 3, 3)
    rep = profiled(lambda: (x.to_mkldnn().to_dense(), torch.ops.aten.mkldnn_reorder_conv2d_weight(w.to_mkldnn())))
    assert rep.uncounted == ()
    to_mkldnn = rows_of(rep, "aten.to_mkldnn")
    assert sum(r.flops for r in to_mkldnn) == 0
    assert sum(r.bytes_read for r in to_mkldnn) == sum(r.bytes_written for r in to_mkldnn) == x.nbytes + w.nbytes
    dense = rows_of(rep, "aten._to_dense") + rows_of(rep, "aten.to_dense")
    assert sum(r.bytes_read for r in dense) == sum(r.bytes_written for r in dense) == x.nbytes
    reorder = one_row(rep, "aten.mkldnn_reorder_conv2d_weight")
    assert reorder.flops == 0 and reorder.bytes_read == reorder.bytes_written == w.nbytes


def test_ops_on_mkldnn_tensors_move_every_element():
    mk = torch.randn(4, 8, 8, 8).to_mkldnn()
    rep = profiled(lambda: torch.relu_(mk))
    row = one_row(rep, "aten.relu_")
    assert row.flops == mk.numel() and row.bytes_read == row.bytes_written == mk.numel() * 4


@pytest.mark.parametrize("kernel, padding, stride, dilation", [(3, 1, 1, 1), (3, 0, 2, 1), (2, 0, 2, 1), (3, 2, 1, 2)])
def test_fold_counts_one_add_per_column_element_it_sums_in(kernel, padding, stride, dilation):
    x = torch.randn(2, 4, 9, 9)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    fold = nn.Fold((9, 9), kernel, dilation=dilation, padding=padding, stride=stride)
    rep = profiled(lambda: (fold(cols), F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)))
    # folding ones counts, at each output element, the column elements summed into it: their
    # total is the adds (those in the padding are dropped, never added)
    landed = int(fold(torch.ones_like(cols)).sum())
    assert one_row(rep, "aten.col2im").flops == landed
    if stride == kernel and padding == 0:  # no overlap, no padding: every column element lands once
        assert landed == cols.numel()
    im2col = one_row(rep, "aten.im2col")
    assert im2col.flops == 0 and im2col.bytes_written == cols.nbytes


def test_quantized_allocation_and_weight_packing_compute_nothing():
    w = torch.randn(8, 16)
    b = torch.randn(8)
    qw = torch.quantize_per_tensor(w, 0.05, 0, torch.qint8)
    rep = profiled(lambda: (torch._empty_affine_quantized([4, 4], scale=0.1, zero_point=0, dtype=torch.quint8),
                            torch.ops.quantized.linear_prepack(qw, b),
                            torch.ops.quantized.linear_prepack_fp16(w, b)))
    assert rep.uncounted == ()
    empty = one_row(rep, "aten._empty_affine_quantized")
    assert empty.flops == 0 and empty.bytes_read == empty.bytes_written == 0
    # packing copies the weight (int8: its own bytes; fp16: float read, half written) and the bias
    pack = one_row(rep, "quantized.linear_prepack")
    assert pack.flops == 0
    assert pack.bytes_read == pack.bytes_written == qw.int_repr().nbytes + b.nbytes
    pack16 = one_row(rep, "quantized.linear_prepack_fp16")
    assert pack16.flops == 0
    assert pack16.bytes_read == w.nbytes + b.nbytes and pack16.bytes_written == w.nbytes // 2 + b.nbytes
