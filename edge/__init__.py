"""fedge.edge"""
