"""robopol.policies"""
