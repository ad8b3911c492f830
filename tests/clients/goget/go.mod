module ringhold.test/goget

go 1.19
