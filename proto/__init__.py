"""fedge.proto"""
