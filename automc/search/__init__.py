"""Search: strategies (progressive, baselines), F_mo, Pareto fronts, the search loop and its reports."""
