"""symnet.codegen: graph -> fused kernels -> module sources + Plan."""
