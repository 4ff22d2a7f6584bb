from pengi_kit.cli import main

main()
