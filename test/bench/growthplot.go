package main

func plotGrowth(g *growth, png string) error { return nil }
