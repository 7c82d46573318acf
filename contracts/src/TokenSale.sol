// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.24;

import {IPSXToken} from "./IPSXToken.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";

/// @title IPSX funding sale
/// @notice Creates the IPSX token (so the sale's 50 % allocation is minted to it) and sells it for ETH
/// at a fixed rate, up to a cap in wei, between `startTime` (inclusive) and `endTime` (exclusive).
/// Bought tokens are delivered at once (locked until finalization). Anyone may `finalize` once the end
/// time is reached or the cap is sold out: that unlocks token transfers and fixes the unsold amount,
/// which every contributor then receives pro rata to the wei it paid (`distributeUnsold`, callable by
/// anyone for any contributor). What no contributor can claim goes to the wallet (`sweepUnsold`): the
/// whole unsold amount when nobody contributed, else the rounding dust of the shares paid so far.
/// There are no refunds: after finalization the wallet withdraws the ETH.
contract TokenSale {
    using SafeERC20 for IERC20;

    IPSXToken public immutable token;
    /// @notice Receives the raised ETH on `withdraw`, the only caller allowed to withdraw; and the
    /// tokens no contributor can claim, on `sweepUnsold`.
    address payable public immutable wallet;
    /// @notice IPSX base units per wei.
    uint256 public immutable rate;
    /// @notice Maximum wei raised.
    uint256 public immutable cap;
    uint256 public immutable startTime;
    uint256 public immutable endTime;

    uint256 public weiRaised;
    uint256 public tokensSold;
    bool public finalized;
    /// @notice Tokens left unsold at finalization, shared among contributors.
    uint256 public unsoldAtFinalize;
    mapping(address contributor => uint256 weiAmount) public contributions;
    mapping(address contributor => bool) public unsoldDistributed;
    /// @notice The wei paid by the contributors whose share of the unsold tokens was sent.
    uint256 public weiDistributed;

    event TokensPurchased(address indexed buyer, uint256 weiAmount, uint256 tokenAmount);
    event Finalized(uint256 weiRaised, uint256 tokensSold, uint256 unsold);
    event UnsoldDistributed(address indexed contributor, uint256 amount);
    event Withdrawn(address indexed wallet, uint256 amount);
    event UnsoldSwept(address indexed wallet, uint256 amount);

    error InvalidConfig();
    error SaleNotOpen(uint256 timestamp);
    error ZeroPurchase();
    error CapExceeded(uint256 weiRaised, uint256 weiAmount, uint256 cap);
    error SaleNotOver();
    error AlreadyFinalized();
    error NotFinalized();
    error NotAContributor(address account);
    error AlreadyDistributed(address contributor);
    error OnlyWallet(address caller);
    error NothingToWithdraw();
    error NothingToSweep();

    constructor(
        address payable wallet_,
        uint256 rate_,
        uint256 cap_,
        uint256 startTime_,
        uint256 endTime_,
        address earlyAdopters,
        address bounty,
        address team
    ) {
        if (wallet_ == address(0) || rate_ == 0 || cap_ == 0 || startTime_ >= endTime_) revert InvalidConfig();
        token = new IPSXToken(address(this), earlyAdopters, bounty, team);
        if (cap_ * rate_ > token.SALE_ALLOCATION()) revert InvalidConfig();
        wallet = wallet_;
        rate = rate_;
        cap = cap_;
        startTime = startTime_;
        endTime = endTime_;
    }

    receive() external payable {
        buy();
    }

    /// @notice Buys `msg.value * rate` IPSX for the caller; reverts outside the window or above the cap.
    function buy() public payable {
        if (block.timestamp < startTime || block.timestamp >= endTime || finalized) {
            revert SaleNotOpen(block.timestamp);
        }
        if (msg.value == 0) revert ZeroPurchase();
        if (weiRaised + msg.value > cap) revert CapExceeded(weiRaised, msg.value, cap);
        uint256 tokens = msg.value * rate;
        weiRaised += msg.value;
        tokensSold += tokens;
        contributions[msg.sender] += msg.value;
        emit TokensPurchased(msg.sender, msg.value, tokens);
        IERC20(address(token)).safeTransfer(msg.sender, tokens);
    }

    /// @notice Closes the sale (after the end time, or once the cap is reached) and unlocks transfers.
    function finalize() external {
        if (finalized) revert AlreadyFinalized();
        if (block.timestamp < endTime && weiRaised < cap) revert SaleNotOver();
        finalized = true;
        uint256 unsold = token.SALE_ALLOCATION() - tokensSold;
        unsoldAtFinalize = unsold;
        emit Finalized(weiRaised, tokensSold, unsold);
        token.enableTransfers();
    }

    /// @notice The contributor's pro-rata share of the unsold tokens (rounded down).
    function unsoldShareOf(address contributor) public view returns (uint256) {
        if (weiRaised == 0) return 0;
        return (unsoldAtFinalize * contributions[contributor]) / weiRaised;
    }

    /// @notice Sends `contributor` its share of the unsold tokens; once per contributor, anyone may call.
    /// @dev Rounding leaves less than one base unit per contributor here, for `sweepUnsold`.
    function distributeUnsold(address contributor) external {
        if (!finalized) revert NotFinalized();
        if (contributions[contributor] == 0) revert NotAContributor(contributor);
        if (unsoldDistributed[contributor]) revert AlreadyDistributed(contributor);
        unsoldDistributed[contributor] = true;
        weiDistributed += contributions[contributor];
        uint256 amount = unsoldShareOf(contributor);
        emit UnsoldDistributed(contributor, amount);
        IERC20(address(token)).safeTransfer(contributor, amount);
    }

    /// @notice The tokens held here that no contributor can claim: after finalization, the balance
    /// above `unsoldAtFinalize * (weiRaised - weiDistributed) / weiRaised`, which bounds the shares not
    /// sent yet (a sum of shares rounded down is at most the share of their sum). So that is the whole
    /// balance when nobody contributed, the dust of the shares sent so far otherwise, and everything
    /// left once every share was sent. Zero before finalization.
    function sweepableUnsold() public view returns (uint256) {
        if (!finalized) return 0;
        uint256 held = token.balanceOf(address(this));
        if (weiRaised == 0) return held;
        uint256 unclaimed = (unsoldAtFinalize * (weiRaised - weiDistributed)) / weiRaised;
        return held - unclaimed;
    }

    /// @notice Sends `sweepableUnsold()` to the wallet; anyone may call, after finalization.
    function sweepUnsold() external {
        if (!finalized) revert NotFinalized();
        uint256 amount = sweepableUnsold();
        if (amount == 0) revert NothingToSweep();
        emit UnsoldSwept(wallet, amount);
        IERC20(address(token)).safeTransfer(wallet, amount);
    }

    /// @notice Sends all raised ETH to the wallet; only the wallet, only after finalization.
    function withdraw() external {
        if (msg.sender != wallet) revert OnlyWallet(msg.sender);
        if (!finalized) revert NotFinalized();
        uint256 amount = address(this).balance;
        if (amount == 0) revert NothingToWithdraw();
        emit Withdrawn(wallet, amount);
        Address.sendValue(wallet, amount);
    }
}
