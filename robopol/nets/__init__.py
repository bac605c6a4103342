"""robopol.nets"""
