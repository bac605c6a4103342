"""robopol.algos"""
