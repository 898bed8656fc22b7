"""fedge.client"""
