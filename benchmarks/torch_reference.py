"""PyTorch autograd reference for SLISTA and LISTA-CP (benchmarks and tests).

The straightforward implementation a user would write with an autodiff
framework, in the style of the reference code (adopty): the whole batch goes
through each layer in turn,

    z_{t+1} = ST(z_t - a_t (z_t D - x) W_t^T, lmbd b_t),   z_0 = 0,

with W_t = D and b_t = a_t for SLISTA (``step``) and learned W_t, a_t, b_t
for LISTA-CP (``coupled``); ST(u, s) = sign(u) relu(|u| - s). The loss is
the mean Lasso objective of the output (or 1/2 ||z_T - s||^2), and its
gradients come from ``loss.backward()``.

float32: ``TorchLista(..., dtype=np.float32)`` keeps D, the parameters, the
signals and every product in float32 (PyTorch's default dtype), as a
float32 ``Lista`` does. Both sides must compute the same loss and
gradients: :func:`differences` measures them, :data:`RTOL` bounds them per
dtype (float32: about 10 and 1000 units of float32 rounding over the T = 30
layers; measured at the paper shape 1.4e-8 and 1.3e-5, LISTA-CP's W). The
forward codes (:func:`code_difference`) are held to the gradients' bound
(measured: 2e-15 in float64, 1.1e-6 in float32).

torch is imported lazily and is never a dependency of fastlista:
``pip install torch`` (CPU build) to run the comparisons.
"""
import numpy as np

__all__ = ["RTOL", "TorchLista", "code_difference", "differences", "import_torch"]

#: the largest relative differences (loss, gradients) between torch and
#: fastlista, per dtype: |loss_t - loss| / |loss| and, per parameter key,
#: ||g_t - g|| / ||g|| over the layers (see :func:`differences`)
RTOL = {np.dtype(np.float64): (1e-10, 1e-8), np.dtype(np.float32): (1e-6, 1e-4)}


def differences(ours, theirs):
    """Relative differences between two ``(loss, grads)`` results.

    Returns ``(loss_rel, grad_rel)``: ``|loss_b - loss_a| / |loss_a|`` and
    the largest, over the parameter keys, of ``||g_b - g_a|| / ||g_a||``
    with each key's gradients of all layers as one vector (in float64).
    """
    (la, ga), (lb, gb) = ours, theirs
    loss_rel = abs(float(lb) - float(la)) / max(abs(float(la)), 1e-300)
    grad_rel = 0.0
    for key in ga[0]:
        a = np.concatenate([np.ravel(np.asarray(g[key], dtype=np.float64)) for g in ga])
        b = np.concatenate([np.ravel(np.asarray(g[key], dtype=np.float64)) for g in gb])
        grad_rel = max(grad_rel, float(np.linalg.norm(b - a))
                       / max(float(np.linalg.norm(a)), 1e-300))
    return loss_rel, grad_rel


def code_difference(ours, theirs):
    """``||Z_b - Z_a|| / ||Z_a||`` (Frobenius, in float64) of two batches of
    codes, ours (a) and theirs (b); 0 when both are 0."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    norm = float(np.linalg.norm(a))
    diff = float(np.linalg.norm(b - a))
    return diff / norm if norm > 0 else diff


def import_torch():
    """Import torch (raises ImportError when it is not installed)."""
    import torch

    return torch


class TorchLista:
    """SLISTA / LISTA-CP in PyTorch, parameters taken from a fastlista network.

    Parameters
    ----------
    D : ndarray of shape (n_atoms, n_features)
    lmbd : float
    parameters : list of dict
        ``Lista.parameters`` of a ``step`` or ``coupled`` network.
    parametrization : {"step", "coupled"}
    dtype : numpy dtype, default=np.float64
    """

    def __init__(self, D, lmbd, parameters, parametrization="step",
                 dtype=np.float64):
        torch = import_torch()
        if parametrization not in ("step", "coupled"):
            raise ValueError(f"unsupported parametrization {parametrization!r}")
        self.torch = torch
        self.tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
        self.D = torch.tensor(np.asarray(D), dtype=self.tdtype)
        self.lmbd = float(lmbd)
        self.parametrization = parametrization
        self.params = [
            {k: torch.tensor(np.asarray(v), dtype=self.tdtype, requires_grad=True)
             for k, v in layer.items()}
            for layer in parameters
        ]

    def _tensor(self, A):
        A = np.asarray(A)
        if not A.flags.writeable:      # torch refuses read-only buffers: copy
            A = A.copy()
        return self.torch.as_tensor(A, dtype=self.tdtype)

    def forward(self, X):
        """Output codes z_T (a torch tensor in the autograd graph)."""
        torch = self.torch
        X = self._tensor(X)
        D = self.D
        Z = torch.zeros(X.shape[0], D.shape[0], dtype=self.tdtype)
        for layer in self.params:
            if self.parametrization == "step":
                a = b = layer["alpha"]
                W = D
            else:
                a, b, W = layer["alpha"], layer["beta"], layer["W"]
            U = Z - a * (Z @ D - X) @ W.T
            Z = torch.sign(U) * torch.relu(U.abs() - self.lmbd * b)
        return Z

    def loss(self, X, Z_target=None):
        """Mean unsupervised (Lasso) or supervised loss of the output."""
        Z = self.forward(X)
        if Z_target is None:
            R = self._tensor(X) - Z @ self.D
            per_sample = 0.5 * (R * R).sum(dim=1) + self.lmbd * Z.abs().sum(dim=1)
        else:
            diff = Z - self._tensor(Z_target)
            per_sample = 0.5 * (diff * diff).sum(dim=1)
        return per_sample.mean()

    def loss_and_grad(self, X, Z_target=None):
        """(loss, gradients as a list of dicts of ndarrays) by autograd."""
        for layer in self.params:
            for v in layer.values():
                v.grad = None
        loss = self.loss(X, Z_target)
        loss.backward()
        grads = [{k: v.grad.detach().numpy().copy() for k, v in layer.items()}
                 for layer in self.params]
        return float(loss.detach()), grads

    def transform(self, X):
        """Output codes as an ndarray, without building the graph."""
        with self.torch.no_grad():
            return self.forward(X).numpy()
