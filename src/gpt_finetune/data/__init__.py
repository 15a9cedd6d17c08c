"""Instruction and classification data: prompt styles, readers, collation, DataModules."""
