"""robopol.train"""
