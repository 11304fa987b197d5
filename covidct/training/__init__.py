"""The parts of a training run that ``covidct.train`` tells in order: checks before anything
is counted (``checks``), the job and its placement (``job``), the model and the DP step
(``build``), the loop (``loop``), and the end: evaluation, audit, report (``finish``).
"""
