"""Code for Graphcore IPUs, written to Graphcore's documented TensorFlow API
(``tensorflow.python.ipu``) and UNVERIFIED ON HARDWARE: no IPU and no Graphcore wheel were
available to this project. Its tests replace ``tensorflow.python.ipu`` by a fake that records the
calls and emulates the documented semantics on the CPU.

``pipeline``: DP-SGD with per-stage clipping on a model pipelined over several IPUs. (Choosing an
IPU as the device is ``covidct.devices``.)
"""
