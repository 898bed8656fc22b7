"""fedge.privacy"""
