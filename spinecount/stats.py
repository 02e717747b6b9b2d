"""Statistics with the animal as the unit: linear mixed models and Holm-corrected contrasts.

Dendrites (or spines) from one animal are not independent observations, so a comparison of
conditions that treats them as such overstates its certainty ("pseudoreplication"). Every
comparison here fits a linear mixed model (statsmodels ``MixedLM``, REML)::

    value ~ condition + (1 | animal)

with dendrites as observations nested in animals, and compares every pair of conditions by a
Wald test of the difference of their fixed effects. The p-values of all pairs of one measure are
corrected together with Holm's method. Where the mixed model cannot be fitted (for example one
dendrite per animal), an ordinary least squares model on the animal means is used instead, and
the ``method`` column says so.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

STATS_COLUMNS = ["measure", "contrast", "condition_a", "condition_b", "estimate", "ci_low",
                 "ci_high", "p_value", "p_adj", "n_animals_a", "n_animals_b", "n_dendrites_a",
                 "n_dendrites_b", "method", "warning"]
MIN_ANIMALS = 3


def condition_order(conditions, reference: str | None = None) -> list[str]:
    """Conditions with the reference first, then in order of appearance.

    The default reference is a condition named like "control" (ctrl, vehicle, saline, sham,
    baseline), else the first one.

    >>> condition_order(["stress", "control", "ketamine"])
    ['control', 'stress', 'ketamine']
    """
    seen = list(dict.fromkeys(str(c) for c in conditions))
    if reference is None:
        names = ("control", "ctrl", "vehicle", "saline", "sham", "baseline")
        reference = next((c for c in seen if c.strip().casefold() in names), None)
        reference = reference or next((c for c in seen if "control" in c.casefold()), None)
        reference = reference or (seen[0] if seen else None)
    elif reference not in seen:
        raise ValueError(f"reference condition {reference!r} is not in the data "
                         f"(conditions: {', '.join(seen)})")
    return [reference] + [c for c in seen if c != reference] if seen else []


def _fit(df: pd.DataFrame, order: list[str]):
    """Fixed-effect means per condition (as a contrast basis), their covariance, and the method."""
    import statsmodels.formula.api as smf

    ref = order[0].replace("'", "\\'")
    formula = f"value ~ C(condition, Treatment(reference='{ref}'))"
    names = ["Intercept"] + [f"C(condition, Treatment(reference='{ref}'))[T.{c}]"
                             for c in order[1:]]
    many = df.groupby("animal").size().max() > 1 and df["animal"].nunique() > len(order)
    if many:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = smf.mixedlm(formula, df, groups=df["animal"]).fit(reml=True)
            cov = res.cov_params().loc[names, names].to_numpy()
            if res.converged and np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
                return res.fe_params[names].to_numpy(), cov, "mixed model (REML), animal random"
        except (np.linalg.LinAlgError, ValueError):
            pass
    means = df.groupby(["animal", "condition"], as_index=False)["value"].mean()
    res = smf.ols(formula, means).fit()
    return (res.params[names].to_numpy(), res.cov_params().loc[names, names].to_numpy(),
            "OLS on animal means")


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given.

    The same numbers as ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``,
    which runs a full garbage collection on every call (about 0.1 s in a large process).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    steps = np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1))
    out = np.empty_like(p)
    out[order] = np.minimum(steps, 1.0)
    return out


def compare_conditions(data: pd.DataFrame, value: str, *, reference: str | None = None,
                       condition: str = "condition", animal: str = "animal",
                       measure: str | None = None) -> pd.DataFrame:
    """Compare every pair of conditions on `value`, with the animal as the unit.

    Parameters
    ----------
    data : DataFrame
        One row per observation (usually a dendrite), with columns `value`, `condition` and
        `animal`.
    value : str
        Column to compare.
    reference : str, optional
        Reference condition: contrasts are written "other - reference" (default: a condition
        named control, else the first).
    measure : str, optional
        Name written in the ``measure`` column (default: `value`).

    Returns
    -------
    DataFrame
        One row per pair: ``contrast`` ("b - a"), ``estimate`` (difference of means of b and a),
        95% ``ci_low, ci_high``, ``p_value``, Holm-adjusted ``p_adj``, animals and dendrites per
        condition, ``method``, and a ``warning`` when a condition has fewer than 3 animals.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> rows = [{"animal": f"{c}{a}", "condition": c, "density": m + rng.normal(0, .02)}
    ...         for c, m in [("control", .5), ("stress", .3)] for a in range(5) for _ in range(3)]
    >>> st = compare_conditions(pd.DataFrame(rows), "density")
    >>> st[["contrast", "n_animals_a", "n_animals_b"]].values.tolist()
    [['stress - control', 5, 5]]
    >>> bool(st.p_adj.iloc[0] < 0.001) and bool(abs(st.estimate.iloc[0] + 0.2) < 0.03)
    True
    """
    from scipy import stats as sst

    df = data[[condition, animal, value]].rename(
        columns={condition: "condition", animal: "animal", value: "value"})
    df = df[np.isfinite(pd.to_numeric(df["value"], errors="coerce"))].astype(
        {"value": float, "condition": str, "animal": str})
    order = condition_order(df["condition"], reference) if len(df) else []
    n_anim = df.groupby("condition")["animal"].nunique()
    n_dend = df.groupby("condition").size()
    rows = []
    if len(order) >= 2:
        beta, cov, method = _fit(df, order)
        # condition means as linear combinations of the fixed effects
        basis = np.zeros((len(order), len(order)))
        basis[:, 0] = 1
        basis[np.arange(1, len(order)), np.arange(1, len(order))] = 1
        for (ia, a), (ib, b) in itertools.combinations(enumerate(order), 2):
            c = basis[ib] - basis[ia]
            est, se = float(c @ beta), float(np.sqrt(c @ cov @ c))
            z = est / se if se > 0 else np.inf
            few = [x for x in (a, b) if n_anim.get(x, 0) < MIN_ANIMALS]
            rows.append({
                "measure": measure or value, "contrast": f"{b} - {a}", "condition_a": a,
                "condition_b": b, "estimate": est, "ci_low": est - 1.959964 * se,
                "ci_high": est + 1.959964 * se, "p_value": float(2 * sst.norm.sf(abs(z))),
                "n_animals_a": int(n_anim.get(a, 0)), "n_animals_b": int(n_anim.get(b, 0)),
                "n_dendrites_a": int(n_dend.get(a, 0)), "n_dendrites_b": int(n_dend.get(b, 0)),
                "method": method,
                "warning": (f"fewer than {MIN_ANIMALS} animals in {', '.join(few)}"
                            if few else ""),
            })
    out = pd.DataFrame(rows, columns=[c for c in STATS_COLUMNS if c != "p_adj"])
    out.insert(8, "p_adj", holm(out["p_value"]))
    for w in sorted(set(out["warning"]) - {""}):
        warnings.warn(f"{measure or value}: {w}; the comparison has little power", stacklevel=2)
    return out
