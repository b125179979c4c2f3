"""Query the stored opt-DDAP results with QueryBuilder (run with `verdi run examples/query_charges.py`).

Every number filtered on here is a node attribute of `optddap.charges` (ChargesData), so the queries
run in the database without loading any array.
"""

from aiida.orm import QueryBuilder
from aiida.plugins import DataFactory

ChargesData = DataFactory("optddap.charges")

# All fits of structures containing Na whose A is well conditioned (κ < 1e6), best loss first. The model that
# produced the charges is an attribute too; σ_start belongs to the Gaussian-ladder models only (None otherwise).
query = QueryBuilder().append(
    ChargesData,
    filters={"attributes.condition_number": {"<": 1e6}, "attributes.elements.Na.count": {">": 0}},
    project=["id", "attributes.formula", "attributes.charge_model", "attributes.loss",
             "attributes.condition_number", "attributes.sigma_start"],
)
query.order_by({ChargesData: {"attributes.loss": {"order": "asc", "cast": "f"}}})
print(f"{'pk':>6} {'formula':<12} {'model':<11} {'loss':>11} {'kappa':>10} {'sigma_start/Å':>14}")
for pk, formula, model, loss, kappa, sigma in query.all():
    sigma_text = "-" if sigma is None else f"{sigma:.4f}"
    print(f"{pk:>6} {formula:<12} {model or '-':<11} {loss:>11.4e} {kappa:>10.3e} {sigma_text:>14}")

# Every fit in which the mean net charge of Mg is above +0.3 e: one filter on a per-element summary.
mg = QueryBuilder().append(
    ChargesData, filters={"attributes.elements.Mg.mean": {">": 0.3}}, project=["id", "attributes.elements.Mg"]
)
for pk, summary in mg.all():
    print(f"ChargesData {pk}: Mg net charge mean {summary['mean']:+.4f} e over {summary['count']} atoms "
          f"(min {summary['min']:+.4f}, max {summary['max']:+.4f})")
