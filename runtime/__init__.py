"""symnet.runtime: executes Plans on backends; never imports sympy or networkx."""
