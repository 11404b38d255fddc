from lrtkit.cli import main

main()
