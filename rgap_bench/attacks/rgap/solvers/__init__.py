"""One solver strategy per method; the plan (`rgap_bench.attacks.rgap.plan`) names which one a layer gets.

Every strategy takes a `LayerProblem`, the layer's `LayerPlan` and the options, and returns a `LayerSolve`; the
joint null-space solve (`solve_joint`) is the recursion's other step, for a layer below a rank-deficient one.
"""

from rgap_bench.attacks.rgap.plan import Strategy
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve, SolveFunction
from rgap_bench.attacks.rgap.solvers.dense import solve_dense
from rgap_bench.attacks.rgap.solvers.explicit import solve_explicit_dense, solve_explicit_sparse, solve_lstsq
from rgap_bench.attacks.rgap.solvers.iterative import solve_pcg
from rgap_bench.attacks.rgap.solvers.joint import solve_joint
from rgap_bench.attacks.rgap.solvers.krylov import solve_krylov
from rgap_bench.attacks.rgap.solvers.linear import solve_linear
from rgap_bench.attacks.rgap.solvers.symbol_null import solve_symbol_null
from rgap_bench.attacks.rgap.solvers.woodbury import solve_woodbury

STRATEGIES: dict[Strategy, SolveFunction] = {
    "direct-linear": solve_linear,
    "pcg": solve_pcg,
    "krylov": solve_krylov,
    "dense": solve_dense,
    "symbol": solve_symbol_null,
    "woodbury": solve_woodbury,
    "explicit-dense": solve_explicit_dense,
    "explicit-sparse": solve_explicit_sparse,
    "lstsq": solve_lstsq,
}

# strategies that factorise a large layer's matrices (dense BLAS work: they run on every CPU thread, not the cap of
# small layers' PCG)
FACTORED: tuple[Strategy, ...] = ("symbol", "woodbury")

__all__ = ["FACTORED", "STRATEGIES", "LayerProblem", "LayerSolve", "solve_joint"]
