from ordersaga.cli import main

main()
