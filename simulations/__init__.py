"""fedge.simulations"""
