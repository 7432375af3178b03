"""Weight initialisation shared by the model's layers."""
from mindspore import nn
from mindspore.common.initializer import XavierUniform


def xavier_dense(in_features: int, out_features: int, bias: bool = True) -> nn.Dense:
    """A Dense layer with Xavier-uniform weights and zero bias, as in the original paper's code."""
    return nn.Dense(in_features, out_features, weight_init=XavierUniform(), bias_init="zeros", has_bias=bias)
