"""The one-line work-chain summary of `aiida-optddap launch/show` prints κ readably (issue 12).

PostgreSQL's JSONB keeps 1e300 (the stored value of an infinite κ) as a numeric and gives it back as a
301-digit integer; the summary printed that integer.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import LinkType

from aiida_optddap.cli.data import format_number
from aiida_optddap.cli.utils.display import show_node, summary_value


def test_format_number_of_huge_integers():
    assert format_number(10**300) == "inf" and format_number(1e300) == "inf"
    assert format_number(5 * 10**20) == "5e+20"
    assert format_number(12) == "12" and format_number(3.14159265, 3) == "3.14"
    assert summary_value(10**300) == "inf" and summary_value(True) == "True" and summary_value("cpu") == "cpu"
    assert summary_value(None) == "None" and summary_value(123456.789) == "1.235e+05"


def test_show_prints_kappa_in_a_few_digits(generate_calc_job_node, capsys):
    out = orm.Dict({"sigma_start": 0.512345678, "factor": 1.5, "gcut": 4.6289, "n_gauss": 3,
                    "condition_number": 1e300, "loss": 1.23456e-3, "converged": None, "device": "cpu"})
    node = generate_calc_job_node(exit_status=0, outputs={"output_parameters": out})
    show_node(node)
    printed = capsys.readouterr().out
    assert "condition_number=inf" in printed and "sigma_start=0.5123" in printed and "loss=0.001235" in printed
    assert max(len(token) for token in printed.split()) < 40  # no 301-digit number
    out = orm.Dict({"condition_number": 123456789.0, "device": "cpu"})
    show_node(generate_calc_job_node(exit_status=0, outputs={"output_parameters": out}))
    assert "condition_number=1.23e+08" in capsys.readouterr().out  # κ to 3 significant digits
