"""fedge.server"""
